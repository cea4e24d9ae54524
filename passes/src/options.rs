//! The passes' options ([`PassOptions`]) and the one parser of their `key=value` form
//! ([`PassOptions::set`]), which the command line's flags, the test harness's `//@ key: value`
//! directives and the fuzz targets share. A key is the command-line flag without its dashes.

use crate::observer::CalibMethod;
use crate::prune_channels::PruneOptions;
use crate::sparsify::SparsifyOptions;
use qc_ir::ScalarType;
use qc_ir::requant::RequantMode;

/// The options of the passes (`qc passes` lists which pass reads which).
#[derive(Clone, Debug)]
pub struct PassOptions {
    /// How `fuse-requant` requantizes: `f32` (ONNX Runtime's formula) or `q31`.
    pub requant: RequantMode,
    /// `calibrate`'s samples (a batch of model inputs): of the first input.
    pub calibration: Option<std::sync::Arc<qc_ir::Tensor>>,
    /// The samples of the model's other inputs, in parameter order (as many along their first
    /// dim as `calibration`): a transformer's attention mask and token types. `calibrate` and
    /// SmoothQuant read them; the passes that evaluate on samples otherwise take one input.
    pub calibration_rest: Vec<std::sync::Arc<qc_ir::Tensor>>,
    /// `calibrate`'s method.
    pub calib_method: CalibMethod,
    /// Per-tensor methods, by value name or op location.
    pub calib_overrides: Vec<(String, CalibMethod)>,
    /// `insert-qdq`'s activation storage: u8 or i8.
    pub activations: ScalarType,
    /// `insert-qdq`: symmetric activations.
    pub symmetric_activations: bool,
    /// `insert-qdq`: one weight scale per tensor instead of per output channel.
    pub per_tensor_weights: bool,
    /// Called by `calibrate` with (samples done, samples in all) after each batch.
    pub progress: Option<Progress>,
    /// Where `calibrate` keeps what it observed, for runs that calibrate the same graph on the
    /// same samples again with another method (`--calib-method auto`): they skip the forward pass.
    pub calib_cache: Option<CalibCache>,
    /// What `prune-channels` removes.
    pub prune: PruneOptions,
    /// What `sparsify` zeroes.
    pub sparsify: SparsifyOptions,
    /// `cluster-weights`: shared values per layer.
    pub clusters: usize,
    /// `insert-qdq`: ops (by location or result name) that stay in fp32.
    pub keep_fp32: Vec<String>,
    /// `equalize`: SmoothQuant's migration strength for gemm/matmul pairs.
    pub smooth_alpha: Option<f32>,
    /// `insert-qdq`: weight bits (8, or 4 for i4 weights).
    pub weight_bits: u8,
    /// `insert-qdq`: weight bits of single layers (by location or result name).
    pub layer_weight_bits: Vec<(String, u8)>,
}

/// What `calibrate` observed on one graph and set of samples: the graph's text and samples'
/// address it was observed for, and one observer per observed value, in `calibrate`'s order.
#[derive(Clone, Default)]
pub struct CalibCache(pub std::sync::Arc<std::sync::Mutex<Option<(String, usize, Vec<crate::support::observer::Observer>)>>>);

impl std::fmt::Debug for CalibCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CalibCache")
    }
}

/// A progress callback: (done, total).
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            requant: Default::default(),
            calibration: None,
            calibration_rest: Vec::new(),
            calib_method: CalibMethod::MinMax,
            calib_overrides: Vec::new(),
            activations: ScalarType::U8,
            symmetric_activations: false,
            per_tensor_weights: false,
            progress: None,
            calib_cache: None,
            prune: PruneOptions::default(),
            sparsify: SparsifyOptions::default(),
            clusters: 16,
            keep_fp32: Vec::new(),
            smooth_alpha: None,
            weight_bits: 8,
            layer_weight_bits: Vec::new(),
        }
    }
}

/// Every key [`PassOptions::set`] takes, with what its value is.
pub const OPTION_KEYS: &[(&str, &str)] = &[
    ("requant", "f32 | q31"),
    ("activations", "u8 | i8"),
    ("symmetric", "(flag)"),
    ("per-tensor", "(flag)"),
    ("calib-method", "minmax | percentile[:P] | kl | js | mse"),
    ("calib-override", "NAME=METHOD"),
    ("keep-fp32", "NAME"),
    ("smooth-alpha", "A"),
    ("weight-bits", "8 | 7 | 4"),
    ("layer-weight-bits", "NAME=4 | NAME=7 | NAME=8"),
    ("prune-ratio", "R"),
    ("prune-layer", "NAME=R"),
    ("prune-criterion", "l1 | l2 | bn-gamma | activation | lsq"),
    ("prune-multiple", "N"),
    ("prune-steps", "N"),
    ("reconstruct", "(flag)"),
    ("distill", "STEPS"),
    ("max-loss", "P"),
    ("sparsity", "S"),
    ("sparsity-layer", "NAME=S"),
    ("sparsity-global", "(flag)"),
    ("block", "(flag)"),
    ("clusters", "K"),
];

impl PassOptions {
    /// Sets option `key` (a command-line flag without its dashes) from its text `value` (`None`
    /// for a flag). Repeatable keys (`keep-fp32`, `prune-layer`, ...) add one entry per call. An
    /// unknown key or a bad value is an error naming the flag and what it takes.
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        let flag = || format!("--{key}");
        let need = || value.ok_or_else(|| format!("{} takes a value", flag()));
        let number = |what: &str| -> Result<f64, String> {
            let v = need()?;
            v.trim().parse::<f64>().map_err(|_| format!("{} takes {what}, not `{v}`", flag()))
        };
        let named = |what: &str| -> Result<(String, String), String> {
            let v = need()?;
            let (name, x) = v.rsplit_once('=').ok_or_else(|| format!("{} takes {what}, got `{v}`", flag()))?;
            Ok((name.to_string(), x.to_string()))
        };
        let no_value = |on: &mut bool| -> Result<(), String> {
            match value {
                None => {
                    *on = true;
                    Ok(())
                }
                Some(v) => Err(format!("{} is a flag and takes no value, got `{v}`", flag())),
            }
        };
        match key {
            "requant" => {
                self.requant = match need()? {
                    "f32" => RequantMode::F32,
                    "q31" => RequantMode::Q31,
                    v => return Err(format!("{} takes f32 or q31, not `{v}`", flag())),
                }
            }
            "activations" => {
                self.activations = match need()? {
                    "u8" => ScalarType::U8,
                    "i8" => ScalarType::I8,
                    v => return Err(format!("{} takes u8 or i8, not `{v}`", flag())),
                }
            }
            "symmetric" => no_value(&mut self.symmetric_activations)?,
            "per-tensor" => no_value(&mut self.per_tensor_weights)?,
            "calib-method" => self.calib_method = need()?.parse()?,
            "calib-override" => {
                let v = need()?;
                let (name, m) = v.split_once('=').ok_or_else(|| format!("{} takes NAME=METHOD, got `{v}`", flag()))?;
                self.calib_overrides.push((name.to_string(), m.parse()?));
            }
            "keep-fp32" => self.keep_fp32.push(need()?.to_string()),
            "smooth-alpha" => self.smooth_alpha = Some(number("a number")? as f32),
            "weight-bits" => {
                self.weight_bits = match number("8, 7 or 4")? {
                    b if b == 4.0 || b == 7.0 || b == 8.0 => b as u8,
                    b => return Err(format!("{} takes 8, 7 or 4, not {b}", flag())),
                }
            }
            "layer-weight-bits" => {
                let bad = || format!("{} takes NAME=4, NAME=7 or NAME=8, got `{}`", flag(), value.unwrap_or_default());
                let (name, b) = named("NAME=4, NAME=7 or NAME=8")?;
                let b: u8 = b.parse().ok().filter(|b| matches!(b, 4 | 7 | 8)).ok_or_else(bad)?;
                self.layer_weight_bits.push((name, b));
            }
            "prune-ratio" => self.prune.ratio = Some(number("a ratio")? as f32),
            "prune-layer" => {
                let bad = || format!("{} takes NAME=RATIO, got `{}`", flag(), value.unwrap_or_default());
                let (name, r) = named("NAME=RATIO")?;
                self.prune.layers.push((name, r.parse().map_err(|_| bad())?));
            }
            "prune-criterion" => self.prune.criterion = need()?.parse()?,
            "prune-multiple" => self.prune.multiple = whole(key, need()?)?,
            "prune-steps" => self.prune.steps = whole(key, need()?)?,
            "reconstruct" => {
                no_value(&mut self.prune.reconstruct)?;
                self.sparsify.reconstruct = true;
            }
            "distill" => self.prune.distill = whole(key, need()?)?,
            "max-loss" => self.prune.max_loss = Some(number("a number of percentage points")?),
            "sparsity" => self.sparsify.sparsity = Some(number("a fraction")? as f32),
            "sparsity-layer" => {
                let bad = || format!("{} takes NAME=FRACTION, got `{}`", flag(), value.unwrap_or_default());
                let (name, r) = named("NAME=FRACTION")?;
                self.sparsify.layers.push((name, r.parse().map_err(|_| bad())?));
            }
            "sparsity-global" => no_value(&mut self.sparsify.global)?,
            "block" => no_value(&mut self.sparsify.block)?,
            "clusters" => self.clusters = whole(key, need()?)?,
            _ => {
                let keys: Vec<&str> = OPTION_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!("unknown option `{key}`; the options are {}", keys.join(", ")));
            }
        }
        Ok(())
    }
}

/// A whole number for option `key`.
fn whole(key: &str, v: &str) -> Result<usize, String> {
    v.trim().parse().map_err(|_| format!("--{key} takes a whole number, not `{v}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_is_taken_and_bad_values_say_what_the_flag_takes() {
        let mut o = PassOptions::default();
        for (key, what) in OPTION_KEYS {
            let value = match *what {
                "(flag)" => None,
                w if w.starts_with("NAME=") => Some(if w.contains("METHOD") { "x=kl" } else { "x=4" }),
                w if w.contains('|') => Some(w.split(" | ").next().expect("a choice").split('[').next().expect("a name")),
                _ => Some("4"),
            };
            o.set(key, value).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        assert_eq!((o.clusters, o.prune.steps, o.layer_weight_bits.len()), (4, 4, 1));
        assert_eq!(o.set("activations", Some("u16")).unwrap_err(), "--activations takes u8 or i8, not `u16`");
        assert_eq!(o.set("prune-layer", Some("conv1")).unwrap_err(), "--prune-layer takes NAME=RATIO, got `conv1`");
        assert!(o.set("block", Some("yes")).unwrap_err().contains("is a flag"));
        assert!(o.set("prune-ration", Some("0.5")).unwrap_err().starts_with("unknown option `prune-ration`"));
    }
}
