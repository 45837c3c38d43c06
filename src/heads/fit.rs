//! Fitting heads: our own small optimisers on standardized features.
//!
//! - Linear softmax: weighted mean cross-entropy + (λ/2)·‖W‖² (bias not penalised), a smooth
//!   convex problem, minimised full-batch with L-BFGS (Nocedal & Wright, *Numerical
//!   Optimization*, 2nd ed., Algorithm 7.4 two-loop recursion, Armijo backtracking §3.1).
//!   λ is chosen on an inner validation split from a short grid, then the head is refitted on
//!   all training rows.
//! - MLP (one ReLU layer): AdamW (Loshchilov & Hutter 2019: Adam with decoupled weight decay)
//!   on mini-batches, early-stopped on the inner validation loss (the best epoch is kept).
//!
//! Why not a crate: the problems are small (≤ 10^5 rows × ≤ 10^4 features), a crate would
//! add a linear-algebra stack for two loops, and these are deterministic for a seed.
//!
//! One job a file: `rng` (seeded splits), `standardize`, `problem` (rows, weights, log-loss),
//! `lbfgs`, `precondition` (Cholesky of the features' second moment), `linear`, `adamw`,
//! `mlp`; here the entry point that checks the data and searches the penalty.

mod adamw;
mod lbfgs;
mod linear;
mod mlp;
mod precondition;
mod problem;
mod rng;
mod standardize;

use anyhow::{bail, Result};
use serde_json::json;

use super::{Kind, Net};
pub use lbfgs::{lbfgs, lbfgs_pre, LbfgsOptions, LbfgsReport};
pub use linear::fit_linear;
use linear::linear_net;
pub use mlp::{fit_mlp, MlpOptions};
pub use precondition::{cholesky, cholesky_solve, preconditioner, second_moment, PRECONDITION_MAX_DIM};
pub use problem::{log_loss, row_weights, Problem};
pub use rng::{stratified_split, Rng};
pub use standardize::{standardize, standardizer};

#[derive(Clone, Debug)]
pub struct FitOptions {
    pub kind: Kind,
    /// L2 penalty of the linear head; None chooses one on an inner validation split.
    pub l2: Option<f64>,
    pub balanced: bool,
    pub mlp: MlpOptions,
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions { kind: Kind::Linear, l2: None, balanced: false, mlp: MlpOptions::default(), seed: 1 }
    }
}

/// What `fit` returns: the standardization, the net, and how it was chosen.
pub struct Fitted {
    pub mu: Vec<f32>,
    pub sd: Vec<f32>,
    pub net: Net,
    pub info: serde_json::Value,
}

/// The L2 grid searched for linear heads (per unit of mean loss), strongest first.
pub const L2_GRID: [f64; 9] = [1.0, 3e-1, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6];

/// Fit a head on raw features `x` (N×d) with labels `y` in 0..c.
pub fn fit(x: &[f32], d: usize, y: &[u32], c: usize, o: &FitOptions) -> Result<Fitted> {
    let n = y.len();
    if d == 0 {
        bail!("the features have no values (dim 0)");
    }
    if n.checked_mul(d) != Some(x.len()) {
        bail!("internal: {} feature values for {n} rows of {d}", x.len());
    }
    if let Some((i, k)) = y.iter().enumerate().find(|(_, k)| **k as usize >= c) {
        bail!("training row {i} has label index {k}, but there are {c} labels");
    }
    // one NaN would make every parameter NaN, and the head would predict nothing
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!("training row {} has a non-finite feature value ({}) in column {}", i / d, x[i], i % d);
    }
    let mut count = vec![0usize; c];
    y.iter().for_each(|&k| count[k as usize] += 1);
    if count.iter().filter(|n| **n > 0).count() < 2 {
        bail!("the training rows hold fewer than two labels");
    }
    let (mu, sd) = standardizer(x, d);
    let z = standardize(x, d, &mu, &sd);
    let weight = row_weights(y, c, o.balanced);
    let all = Problem { z: &z, d, y, weight: &weight, c };
    // inner split for model selection (its rows are drawn from the training rows only)
    let (fit_idx, val_idx) = stratified_split(y, c, 0.2, o.seed ^ 0xA5A5);
    let gather = |idx: &[usize]| -> (Vec<f32>, Vec<u32>, Vec<f32>) {
        let mut zz = Vec::with_capacity(idx.len() * d);
        idx.iter().for_each(|&i| zz.extend_from_slice(&z[i * d..(i + 1) * d]));
        (zz, idx.iter().map(|&i| y[i]).collect(), idx.iter().map(|&i| weight[i]).collect())
    };
    let (zf, yf, wf) = gather(&fit_idx);
    let (zv, yv, wv) = gather(&val_idx);
    let fitp = Problem { z: &zf, d, y: &yf, weight: &wf, c };
    let valp = Problem { z: &zv, d, y: &yv, weight: &wv, c };
    match o.kind {
        Kind::Linear => {
            let moment = second_moment(&all);
            let (lambda, path, warm) = match o.l2 {
                Some(l) => (l, Vec::new(), None),
                None if val_idx.is_empty() => (1e-2, Vec::new(), None),
                None => {
                    // decreasing penalties, each warm-started from the last
                    let mut start: Option<Vec<f64>> = None;
                    let mut path = Vec::new();
                    let (mut best, mut best_l, mut best_p) = (f64::INFINITY, L2_GRID[0], None);
                    let mut worse = 0;
                    for &l in &L2_GRID {
                        // the search needs the ranking of penalties, not the last digits
                        let o = LbfgsOptions { max_iter: 300, tol: 1e-5, ..Default::default() };
                        let (params, rep) = fit_linear(&fitp, l, start.as_deref(), o, moment.as_deref());
                        let loss = log_loss(&linear_net(&params, c, d), &valp);
                        path.push(json!({"l2": l, "inner_val_log_loss": loss, "iterations": rep.iterations}));
                        if loss < best {
                            best = loss;
                            best_l = l;
                            best_p = Some(params.clone());
                            worse = 0;
                        } else {
                            worse += 1;
                        }
                        start = Some(params);
                        if worse == 2 {
                            break; // past the minimum: weaker penalties only overfit more
                        }
                    }
                    (best_l, path, best_p)
                }
            };
            let (params, rep) = fit_linear(&all, lambda, warm.as_deref(), LbfgsOptions { max_iter: 1000, ..Default::default() }, moment.as_deref());
            let info = json!({"optimizer": "lbfgs", "l2": lambda, "l2_path": path, "iterations": rep.iterations,
                "evaluations": rep.evaluations, "converged": rep.converged, "stop": rep.stop, "train_objective": rep.f,
                "preconditioned": moment.is_some(),
                "balanced": o.balanced});
            Ok(Fitted { mu, sd, net: linear_net(&params, c, d), info })
        }
        Kind::Mlp => {
            if val_idx.is_empty() {
                bail!("too few training rows for an MLP (it needs an inner validation split)");
            }
            let mut mo = o.mlp.clone();
            mo.seed ^= o.seed;
            let (net, mut info) = fit_mlp(&fitp, &valp, &mo);
            info["balanced"] = json!(o.balanced);
            Ok(Fitted { mu, sd, net, info })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        // three Gaussian-ish blobs in 5-d, centres on the first three axes
        let mut rng = Rng::new(seed);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let k = (i % 3) as u32;
            for j in 0..5 {
                let noise = (0..4).map(|_| rng.unit()).sum::<f64>() - 2.0;
                x.push((noise + if j == k as usize { 2.5 } else { 0.0 }) as f32);
            }
            y.push(k);
        }
        (x, y)
    }

    fn accuracy(f: &Fitted, x: &[f32], y: &[u32]) -> f64 {
        let z = standardize(x, 5, &f.mu, &f.sd);
        let mut out = [0f32; 3];
        let mut h = Vec::new();
        let mut ok = 0;
        for (i, row) in z.chunks(5).enumerate() {
            f.net.logits(row, &mut h, &mut out);
            let best = (0..3).max_by(|a, b| out[*a].partial_cmp(&out[*b]).unwrap()).unwrap();
            ok += (best as u32 == y[i]) as usize;
        }
        ok as f64 / y.len() as f64
    }

    #[test]
    fn both_heads_learn_separable_blobs() {
        let (x, y) = blobs(600, 1);
        let (xt, yt) = blobs(300, 2);
        for kind in [Kind::Linear, Kind::Mlp] {
            let f = fit(&x, 5, &y, 3, &FitOptions { kind, ..Default::default() }).unwrap();
            let acc = accuracy(&f, &xt, &yt);
            assert!(acc > 0.95, "{kind:?}: held-out accuracy {acc}");
        }
    }

    #[test]
    fn mlp_learns_xor() {
        // not linearly separable: the MLP must beat the linear head by far
        let mut rng = Rng::new(5);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..800 {
            let (a, b) = (rng.unit() * 2.0 - 1.0, rng.unit() * 2.0 - 1.0);
            x.extend([a as f32, b as f32, 0.0, 0.0, 0.0]);
            y.push(((a > 0.0) != (b > 0.0)) as u32);
        }
        let (tr, te) = (600 * 5, 600);
        let o = FitOptions { kind: Kind::Mlp, mlp: MlpOptions { hidden: 16, lr: 1e-2, ..Default::default() }, ..Default::default() };
        let f = fit(&x[..tr], 5, &y[..te], 2, &o).unwrap();
        let z = standardize(&x[tr..], 5, &f.mu, &f.sd);
        let (mut out, mut h, mut ok) = ([0f32; 2], Vec::new(), 0);
        for (i, row) in z.chunks(5).enumerate() {
            f.net.logits(row, &mut h, &mut out);
            ok += (((out[1] > out[0]) as u32) == y[te + i]) as usize;
        }
        assert!(ok as f64 / 200.0 > 0.9, "xor accuracy {}", ok as f64 / 200.0);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let o = FitOptions::default();
        let err = |x: &[f32], d: usize, y: &[u32]| fit(x, d, y, 2, &o).err().expect("an error").to_string();
        let e = err(&[], 0, &[0, 1]);
        assert!(e.contains("dim 0"), "{e}");
        let e = err(&[0.0, 1.0], 1, &[0, 2]);
        assert!(e.contains("label index 2"), "{e}");
        let e = err(&[0.0, 1.0, f32::NAN, 3.0], 2, &[0, 1]);
        assert!(e.contains("row 1") && e.contains("column 0"), "{e}");
    }
}
