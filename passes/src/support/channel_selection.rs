//! Choosing which channels to prune by what least squares can make up for (the `lsq` criterion).
//!
//! For a group of channels, every layer reading them (a *sink*) has the least-squares statistics
//! of its output against the unpruned model ([`crate::reconstruct::normal_equations`]). Removing
//! channel `c` removes a block `B` of the sink's input columns; with `H = (PᵀP + λI)⁻¹` and the
//! current solution `w = H Pᵀy`, the refitted residual grows by `Δ = w_Bᵀ H_BB⁻¹ w_B` (summed over
//! outputs). Greedy backward elimination removes, one at a time, the channel whose `Δ` —
//! relative to each sink's `Σ y²`, summed over the sinks — is smallest, then updates `H` and `w`
//! in closed form (`H' = H_SS − H_SB H_BB⁻¹ H_BS`). This is ThiNet / channel pruning by LASSO
//! regression done exactly for small layers, on calibration data, without training.

use crate::channel_flow::{Flow, Rule, rule};
use crate::reconstruct::{Normal, cholesky_solve, normal_equations, ridge};
use qc_ir::{Graph, NodeId, Tensor};
use std::collections::HashMap;

/// One layer reading the group, mid-elimination.
struct Sink {
    /// Columns still in (indices into the layer's `k + 1` patch columns, the bias last).
    active: Vec<usize>,
    /// `(PᵀP + λI)⁻¹` over the active columns.
    h: Vec<f64>,
    /// The solution over the active columns, `|active| × o`.
    w: Vec<f64>,
    o: usize,
    yy: f64,
    /// The patch columns each channel of the group feeds.
    columns: Vec<Vec<usize>>,
}

impl Sink {
    fn new(normal: Normal, columns: Vec<Vec<usize>>) -> Result<Sink, String> {
        let k1 = normal.k + 1;
        let mut a = normal.gram.clone();
        let lambda = ridge(&normal.gram, k1);
        for i in 0..k1 {
            a[i * k1 + i] += lambda;
        }
        let mut h = vec![0f64; k1 * k1];
        for i in 0..k1 {
            h[i * k1 + i] = 1.0;
        }
        cholesky_solve(a, k1, &mut h, k1)?;
        let o = normal.o;
        let mut w = vec![0f64; k1 * o];
        for i in 0..k1 {
            for j in 0..k1 {
                let hij = h[i * k1 + j];
                for c in 0..o {
                    w[i * o + c] += hij * normal.rhs[j * o + c];
                }
            }
        }
        Ok(Sink { active: (0..k1).collect(), h, w, o, yy: normal.yy.max(f64::MIN_POSITIVE), columns })
    }

    /// Local indices (into `active`) of channel `c`'s columns.
    fn block(&self, c: usize) -> Vec<usize> {
        self.columns[c].iter().filter_map(|col| self.active.iter().position(|a| a == col)).collect()
    }

    /// `H_BB⁻¹ X` for the block `b`, with `X` given as `|b| × m`.
    fn solve_bb(&self, b: &[usize], x: &mut [f64], m: usize) -> Result<(), String> {
        let n = self.active.len();
        let hbb: Vec<f64> = b.iter().flat_map(|&i| b.iter().map(move |&j| (i, j))).map(|(i, j)| self.h[i * n + j]).collect();
        cholesky_solve(hbb, b.len(), x, m)
    }

    /// How much the relative residual grows if channel `c` goes.
    fn cost(&self, c: usize) -> Result<f64, String> {
        let b = self.block(c);
        if b.is_empty() {
            return Ok(0.0);
        }
        let wb: Vec<f64> =
            b.iter().flat_map(|&i| (0..self.o).map(move |k| (i, k))).map(|(i, k)| self.w[i * self.o + k]).collect();
        let mut x = wb.clone();
        self.solve_bb(&b, &mut x, self.o)?;
        Ok(wb.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() / self.yy)
    }

    /// Removes channel `c`'s columns, updating `H` and `w`.
    fn remove(&mut self, c: usize) -> Result<(), String> {
        let b = self.block(c);
        if b.is_empty() {
            return Ok(());
        }
        let n = self.active.len();
        let keep: Vec<usize> = (0..n).filter(|i| !b.contains(i)).collect();
        // Y = H_BB⁻¹ [H_B,S | w_B]
        let m = keep.len() + self.o;
        let mut y = vec![0f64; b.len() * m];
        for (r, &i) in b.iter().enumerate() {
            for (col, &j) in keep.iter().enumerate() {
                y[r * m + col] = self.h[i * n + j];
            }
            for k in 0..self.o {
                y[r * m + keep.len() + k] = self.w[i * self.o + k];
            }
        }
        self.solve_bb(&b, &mut y, m)?;
        let s = keep.len();
        let mut h = vec![0f64; s * s];
        let mut w = vec![0f64; s * self.o];
        for (r, &i) in keep.iter().enumerate() {
            for (col, &j) in keep.iter().enumerate() {
                let mut v = self.h[i * n + j];
                for (q, &bi) in b.iter().enumerate() {
                    v -= self.h[i * n + bi] * y[q * m + col];
                }
                h[r * s + col] = v;
            }
            for k in 0..self.o {
                let mut v = self.w[i * self.o + k];
                for (q, &bi) in b.iter().enumerate() {
                    v -= self.h[i * n + bi] * y[q * m + s + k];
                }
                w[r * self.o + k] = v;
            }
        }
        self.active = keep.iter().map(|&i| self.active[i]).collect();
        self.h = h;
        self.w = w;
        Ok(())
    }
}

/// The `drop` channels of group `root` (of `flow` over `student`) whose removal the following
/// layers' least-squares refit absorbs best, ascending. `origin` maps each layer's current output
/// channels to the teacher's.
pub fn select(
    teacher: &Graph,
    student: &Graph,
    flow: &Flow,
    root: usize,
    drop: usize,
    origin: &HashMap<NodeId, Vec<usize>>,
    batches: &[Tensor],
) -> Result<Vec<usize>, String> {
    let channels = flow.spaces[root].channels;
    let mut sinks = Vec::new();
    for n in student.topo_order().unwrap_or_default() {
        let Some(&x) = student.node(n).operands.first() else { continue };
        if !matches!(rule(student, n), Rule::Layer { .. }) {
            continue;
        }
        let Some(ps) = flow.carriers.get(&x) else { continue };
        let mine: Vec<_> = ps.iter().filter(|p| flow.root(p.space) == root).collect();
        if mine.is_empty() {
            continue;
        }
        let normal = normal_equations(teacher, student, n, &origin[&n], batches)?;
        let taps = normal.taps;
        let columns = (0..channels)
            .map(|c| {
                mine.iter()
                    .flat_map(|p| {
                        (p.offset + c * p.block..p.offset + (c + 1) * p.block).flat_map(move |pos| pos * taps..(pos + 1) * taps)
                    })
                    .collect()
            })
            .collect();
        sinks.push(Sink::new(normal, columns)?);
    }
    let mut alive: Vec<usize> = (0..channels).collect();
    let mut gone = Vec::new();
    for _ in 0..drop.min(channels) {
        let mut best: Option<(f64, usize)> = None;
        for (i, &c) in alive.iter().enumerate() {
            let mut cost = 0.0;
            for s in &sinks {
                cost += s.cost(c)?;
            }
            if best.is_none_or(|(b, _)| cost < b) {
                best = Some((cost, i));
            }
        }
        let (_, i) = best.expect("channels remain");
        let c = alive.remove(i);
        for s in &mut sinks {
            s.remove(c)?;
        }
        gone.push(c);
    }
    gone.sort_unstable();
    Ok(gone)
}
