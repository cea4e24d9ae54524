//! Calibration observers: bounded state per tensor (running min/max and a histogram of |x| whose
//! range grows by merging bins), and the methods that choose a clipping range from it.

use std::fmt;
use std::str::FromStr;

/// Histogram bins (as TensorRT's entropy calibration).
pub const BINS: usize = 2048;

/// How a tensor's clipping range is chosen from what was observed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CalibMethod {
    /// The observed minimum and maximum.
    MinMax,
    /// The given percentile of |x| (99.99 by default).
    Percentile(f64),
    /// The threshold minimizing the KL divergence between the clipped distribution and its
    /// 8-bit quantization (TensorRT's entropy calibration).
    Kl,
    /// As `Kl`, with the Jensen–Shannon divergence.
    Js,
    /// The threshold minimizing the expected squared quantization error.
    Mse,
}

impl Default for CalibMethod {
    fn default() -> Self {
        CalibMethod::MinMax
    }
}

impl FromStr for CalibMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minmax" => Ok(CalibMethod::MinMax),
            "percentile" => Ok(CalibMethod::Percentile(99.99)),
            "kl" | "entropy" => Ok(CalibMethod::Kl),
            "js" => Ok(CalibMethod::Js),
            "mse" => Ok(CalibMethod::Mse),
            _ => match s.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 0.0 && p <= 100.0 => Ok(CalibMethod::Percentile(p)),
                _ => Err(format!("unknown calibration method `{s}` (expected minmax, percentile[:P], kl, js or mse)")),
            },
        }
    }
}

impl fmt::Display for CalibMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibMethod::MinMax => f.write_str("minmax"),
            CalibMethod::Percentile(p) => write!(f, "percentile:{p}"),
            CalibMethod::Kl => f.write_str("kl"),
            CalibMethod::Js => f.write_str("js"),
            CalibMethod::Mse => f.write_str("mse"),
        }
    }
}

/// What one tensor has shown over the calibration samples.
#[derive(Clone, Debug)]
pub struct Observer {
    /// The smallest value seen.
    pub min: f32,
    /// The largest value seen.
    pub max: f32,
    /// Counts of nonzero |x| in `BINS` equal bins over `[0, range]`.
    hist: Vec<u64>,
    range: f32,
    /// Exact zeros (ReLU outputs, padding) are kept apart: they quantize exactly, and a spike at
    /// zero would otherwise dominate the divergence searches.
    zeros: u64,
}

impl Default for Observer {
    fn default() -> Self {
        Observer { min: f32::INFINITY, max: f32::NEG_INFINITY, hist: vec![0; BINS], range: 0.0, zeros: 0 }
    }
}

impl Observer {
    /// Records a batch of finite values.
    pub fn observe(&mut self, values: impl Iterator<Item = f32> + Clone) {
        let mut peak = 0f32;
        for v in values.clone() {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            peak = peak.max(v.abs());
        }
        if self.range == 0.0 {
            self.range = peak;
        }
        // Grow the range by doubling, merging pairs of bins, until the batch fits.
        while peak > self.range {
            for i in 0..BINS / 2 {
                self.hist[i] = self.hist[2 * i] + self.hist[2 * i + 1];
            }
            self.hist[BINS / 2..].fill(0);
            self.range *= 2.0;
        }
        if self.range == 0.0 {
            self.zeros += values.count() as u64;
            return;
        }
        let width = self.range / BINS as f32;
        for v in values {
            if v == 0.0 {
                self.zeros += 1;
                continue;
            }
            let b = ((v.abs() / width) as usize).min(BINS - 1);
            self.hist[b] += 1;
        }
    }

    /// The histogram of nonzero |x|: the counts of `BINS` equal bins over `[0, range]`, the range,
    /// and how many values were exactly zero (for plots).
    pub fn histogram(&self) -> (&[u64], f32, u64) {
        (&self.hist, self.range, self.zeros)
    }

    /// The clipping range `[lo, hi]` the method chooses; it always includes 0.
    pub fn range(&self, method: CalibMethod) -> (f32, f32) {
        let (lo, hi) = (self.min.min(0.0), self.max.max(0.0));
        if !lo.is_finite() || !hi.is_finite() || self.range == 0.0 {
            return (lo.min(0.0).max(f32::MIN), hi.max(0.0).min(f32::MAX));
        }
        let threshold = match method {
            CalibMethod::MinMax => return (lo, hi),
            CalibMethod::Percentile(p) => self.percentile(p),
            CalibMethod::Kl => self.divergence_threshold(kl),
            CalibMethod::Js => self.divergence_threshold(js),
            CalibMethod::Mse => self.mse_threshold(lo < 0.0),
        };
        (lo.max(-threshold), hi.min(threshold))
    }

    fn width(&self) -> f64 {
        self.range as f64 / BINS as f64
    }

    fn percentile(&self, p: f64) -> f32 {
        let total: u64 = self.hist.iter().sum::<u64>() + self.zeros;
        let target = (total as f64 * p / 100.0).ceil() as u64;
        let mut seen = self.zeros;
        for (i, &h) in self.hist.iter().enumerate() {
            seen += h;
            if seen >= target {
                return ((i + 1) as f64 * self.width()) as f32;
            }
        }
        self.range
    }

    /// TensorRT's search: for each candidate number of bins `i`, the reference distribution is
    /// the first `i` bins with the outliers added to the last; the candidate is that, merged into
    /// 128 levels and spread back; pick the `i` of least divergence.
    fn divergence_threshold(&self, divergence: fn(&[f64], &[f64]) -> f64) -> f32 {
        const LEVELS: usize = 64;
        let mut best = (f64::INFINITY, BINS);
        for i in (2 * LEVELS..=BINS).step_by(16) {
            let mut p: Vec<f64> = self.hist[..i].iter().map(|&h| h as f64).collect();
            p[i - 1] += self.hist[i..].iter().map(|&h| h as f64).sum::<f64>();
            if p.iter().sum::<f64>() == 0.0 {
                continue;
            }
            let mut q = vec![0f64; i];
            let per = i as f64 / LEVELS as f64;
            for l in 0..LEVELS {
                let (start, end) = ((l as f64 * per) as usize, (((l + 1) as f64 * per) as usize).min(i));
                let sum: f64 = self.hist[start..end].iter().map(|&h| h as f64).sum();
                let nonzero = self.hist[start..end].iter().filter(|&&h| h > 0).count();
                if nonzero > 0 {
                    for b in start..end {
                        if self.hist[b] > 0 {
                            q[b] = sum / nonzero as f64;
                        }
                    }
                }
            }
            let d = divergence(&normalize(&p), &normalize(&q));
            if d < best.0 {
                best = (d, i);
            }
        }
        (best.1 as f64 * self.width()) as f32
    }

    /// The threshold minimizing clipping error plus rounding error (step²/12 per value).
    fn mse_threshold(&self, signed: bool) -> f32 {
        let w = self.width();
        let mut best = (f64::INFINITY, self.range as f64);
        for i in (16..=BINS).step_by(16) {
            let t = i as f64 * w;
            let step = if signed { 2.0 * t / 255.0 } else { t / 255.0 };
            let mut err = 0.0;
            for (b, &h) in self.hist.iter().enumerate() {
                if h == 0 {
                    continue;
                }
                let center = (b as f64 + 0.5) * w;
                err += h as f64 * if center > t { (center - t).powi(2) } else { step * step / 12.0 };
            }
            if err < best.0 {
                best = (err, t);
            }
        }
        best.1 as f32
    }
}

fn normalize(v: &[f64]) -> Vec<f64> {
    let s: f64 = v.iter().sum();
    v.iter().map(|x| if s > 0.0 { x / s } else { 0.0 }).collect()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            if a == 0.0 {
                0.0
            } else if b == 0.0 {
                a * (a / 1e-10).ln()
            } else {
                a * (a / b).ln()
            }
        })
        .sum()
}

fn js(p: &[f64], q: &[f64]) -> f64 {
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
    (kl(p, &m) + kl(q, &m)) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_grows_by_merging() {
        let mut o = Observer::default();
        o.observe([1.0f32, -0.5].into_iter());
        o.observe([3.5f32].into_iter());
        assert_eq!((o.min, o.max), (-0.5, 3.5));
        assert_eq!(o.range, 4.0);
        assert_eq!(o.hist.iter().sum::<u64>() + o.zeros, 3);
        assert_eq!(o.range(CalibMethod::MinMax), (-0.5, 3.5));
    }

    #[test]
    fn clipping_methods_cut_outliers() {
        let mut o = Observer::default();
        let bulk: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 100.0).collect();
        o.observe(bulk.iter().copied());
        o.observe([50.0f32].into_iter());
        for m in [CalibMethod::Percentile(99.9), CalibMethod::Kl, CalibMethod::Js] {
            let (lo, hi) = o.range(m);
            assert_eq!(lo, 0.0, "{m}");
            assert!(hi > 0.5 && hi < 10.0, "{m}: {hi}");
        }
        // One outlier in 10 001 costs more clipped than rounded: MSE keeps it, but never clips
        // the bulk.
        let (_, hi) = o.range(CalibMethod::Mse);
        assert!(hi > 0.9 && hi <= 50.0, "mse: {hi}");
        assert_eq!(o.range(CalibMethod::MinMax), (0.0, 50.0));
    }

    #[test]
    fn zero_range_is_valid() {
        let mut o = Observer::default();
        o.observe([0.0f32; 8].into_iter());
        for m in [CalibMethod::MinMax, CalibMethod::Kl, CalibMethod::Mse] {
            assert_eq!(o.range(m), (0.0, 0.0));
        }
    }

    #[test]
    fn methods_parse() {
        assert_eq!("percentile:99.9".parse::<CalibMethod>().unwrap(), CalibMethod::Percentile(99.9));
        assert_eq!("kl".parse::<CalibMethod>().unwrap(), CalibMethod::Kl);
        assert!("percentile:0".parse::<CalibMethod>().is_err());
        assert!("median".parse::<CalibMethod>().is_err());
    }
}
