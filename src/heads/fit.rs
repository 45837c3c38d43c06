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

use anyhow::{bail, Result};
use rayon::prelude::*;
use serde_json::json;

use super::{dot, softmax, Kind, Net};

/// SplitMix64: a small seeded generator for splits, sampling and initialisation.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize % n.max(1)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Split row indices into (kept, held out), per class, so each class with two or more rows has
/// at least one on each side. Deterministic for a seed.
pub fn stratified_split(y: &[u32], n_classes: usize, held_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let (mut keep, mut held) = (Vec::new(), Vec::new());
    for c in 0..n_classes as u32 {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        rng.shuffle(&mut idx);
        let mut k = (idx.len() as f64 * held_fraction).round() as usize;
        if idx.len() >= 2 {
            k = k.clamp(1, idx.len() - 1);
        } else {
            k = 0;
        }
        held.extend_from_slice(&idx[..k]);
        keep.extend_from_slice(&idx[k..]);
    }
    keep.sort_unstable();
    held.sort_unstable();
    (keep, held)
}

/// Per-feature mean and standard deviation (a constant feature gets sd 1).
pub fn standardizer(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / d.max(1)).max(1);
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += *v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = vec![0f64; d];
    for row in x.chunks_exact(d) {
        var.iter_mut().zip(row).zip(&mean).for_each(|((s, v), m)| *s += (*v as f64 - m).powi(2));
    }
    let sd = var.iter().map(|v| {
        let s = (v / n as f64).sqrt();
        if s > 1e-6 { s as f32 } else { 1.0 }
    });
    (mean.iter().map(|m| *m as f32).collect(), sd.collect())
}

pub fn standardize(x: &[f32], d: usize, mu: &[f32], sd: &[f32]) -> Vec<f32> {
    let mut z = x.to_vec();
    for row in z.chunks_exact_mut(d) {
        row.iter_mut().zip(mu).zip(sd).for_each(|((v, m), s)| *v = (*v - m) / s);
    }
    z
}

/// Rows, labels and per-row weights of one fitting problem (features already standardized).
#[derive(Clone, Copy)]
pub struct Problem<'a> {
    pub z: &'a [f32],
    pub d: usize,
    pub y: &'a [u32],
    pub weight: &'a [f32],
    pub c: usize,
}

impl<'a> Problem<'a> {
    pub fn n(&self) -> usize {
        self.y.len()
    }
    fn row(&self, i: usize) -> &'a [f32] {
        &self.z[i * self.d..(i + 1) * self.d]
    }
    fn total_weight(&self) -> f64 {
        self.weight.iter().map(|w| *w as f64).sum()
    }
}

/// Per-row weights: 1, or `n / (C · n_class)` so every class weighs the same in total.
pub fn row_weights(y: &[u32], c: usize, balanced: bool) -> Vec<f32> {
    if !balanced {
        return vec![1.0; y.len()];
    }
    let mut count = vec![0usize; c];
    y.iter().for_each(|&k| count[k as usize] += 1);
    let present = count.iter().filter(|n| **n > 0).count().max(1);
    y.iter().map(|&k| y.len() as f32 / (present * count[k as usize]) as f32).collect()
}

#[derive(Clone, Copy, Debug)]
pub struct LbfgsOptions {
    pub memory: usize,
    pub max_iter: usize,
    /// Stop when ‖g‖∞ ≤ tol · max(1, |f|).
    pub tol: f64,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        LbfgsOptions { memory: 10, max_iter: 500, tol: 1e-6 }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LbfgsReport {
    pub iterations: usize,
    pub evaluations: usize,
    pub f: f64,
    /// The gradient test passed, or the value stopped changing (or no step lowered it any
    /// more: the limit of float precision).
    pub converged: bool,
    pub stop: &'static str,
}

/// Minimise a smooth function with L-BFGS. `f(x, g)` returns the value and writes the gradient.
pub fn lbfgs(f: impl FnMut(&[f64], &mut [f64]) -> f64, x: Vec<f64>, opt: LbfgsOptions) -> (Vec<f64>, LbfgsReport) {
    lbfgs_pre(f, x, opt, &|_| {})
}

/// L-BFGS with a preconditioner: `precond(v)` replaces v by M⁻¹v for a fixed positive definite
/// M that approximates the Hessian's shape; it becomes the initial inverse Hessian H₀ = γM⁻¹ of
/// the two-loop recursion (Nocedal & Wright §7.2), γ = sᵀy / yᵀM⁻¹y.
pub fn lbfgs_pre(mut f: impl FnMut(&[f64], &mut [f64]) -> f64, mut x: Vec<f64>, opt: LbfgsOptions, precond: &dyn Fn(&mut [f64])) -> (Vec<f64>, LbfgsReport) {
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut evals = 1;
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let (mut xn, mut gn) = (vec![0.0; n], vec![0.0; n]);
    let mut d = vec![0.0; n];
    let mut stalls = 0;
    let inf = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let dotf = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for it in 0..opt.max_iter {
        if inf(&g) <= opt.tol * fx.abs().max(1.0) {
            return (x, LbfgsReport { iterations: it, evaluations: evals, f: fx, converged: true, stop: "gradient" });
        }
        // two-loop recursion: d = -H g
        d.iter_mut().zip(&g).for_each(|(d, g)| *d = -g);
        let k = s_hist.len();
        let mut alpha = vec![0.0; k];
        for i in (0..k).rev() {
            alpha[i] = rho[i] * dotf(&s_hist[i], &d);
            d.iter_mut().zip(&y_hist[i]).for_each(|(d, y)| *d -= alpha[i] * y);
        }
        precond(&mut d);
        let gamma = if k > 0 {
            let mut my = y_hist[k - 1].clone();
            precond(&mut my);
            dotf(&s_hist[k - 1], &y_hist[k - 1]) / dotf(&y_hist[k - 1], &my)
        } else {
            1.0 / inf(&d).max(1.0)
        };
        d.iter_mut().for_each(|d| *d *= gamma);
        for i in 0..k {
            let beta = rho[i] * dotf(&y_hist[i], &d);
            d.iter_mut().zip(&s_hist[i]).for_each(|(d, s)| *d += (alpha[i] - beta) * s);
        }
        let mut slope = dotf(&g, &d);
        if slope >= 0.0 {
            // not a descent direction (numerical trouble): restart from steepest descent
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            d.iter_mut().zip(&g).for_each(|(d, g)| *d = -g);
            precond(&mut d);
            let scale = inf(&d).max(1.0);
            d.iter_mut().for_each(|d| *d /= scale);
            slope = dotf(&g, &d);
        }
        // Armijo backtracking
        let mut t = 1.0;
        let mut fnew;
        let mut ok = false;
        loop {
            xn.iter_mut().zip(&x).zip(&d).for_each(|((xn, x), d)| *xn = x + t * d);
            fnew = f(&xn, &mut gn);
            evals += 1;
            if fnew.is_finite() && fnew <= fx + 1e-4 * t * slope {
                ok = true;
                break;
            }
            t *= 0.5;
            if t < 1e-12 {
                break;
            }
        }
        if !ok {
            // no step lowers f: at the noise floor of the objective when the gradient is small
            let small = inf(&g) <= 1e-3 * fx.abs().max(1.0);
            return (x, LbfgsReport { iterations: it, evaluations: evals, f: fx, converged: small, stop: "line search" });
        }
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dotf(&s, &yv);
        if sy > 1e-12 * dotf(&yv, &yv).max(1e-300) {
            if s_hist.len() == opt.memory {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(yv);
            rho.push(1.0 / sy);
        }
        let rel = (fx - fnew) / fx.abs().max(1.0);
        std::mem::swap(&mut x, &mut xn);
        std::mem::swap(&mut g, &mut gn);
        fx = fnew;
        stalls = if rel < 1e-12 { stalls + 1 } else { 0 };
        if stalls >= 5 {
            return (x, LbfgsReport { iterations: it + 1, evaluations: evals, f: fx, converged: true, stop: "no change" });
        }
    }
    (x, LbfgsReport { iterations: opt.max_iter, evaluations: evals, f: fx, converged: false, stop: "iterations" })
}

/// Rows per parallel work item.
const ROWS: usize = 512;

/// Weighted mean cross-entropy of a linear softmax and its gradient; params = [W (C×D), b (C)].
fn linear_objective(p: &Problem, params: &[f64], lambda: f64, grad: &mut [f64]) -> f64 {
    let (c, d) = (p.c, p.d);
    let w32: Vec<f32> = params.iter().map(|v| *v as f32).collect();
    let (w, b) = w32.split_at(c * d);
    let total = p.total_weight().max(1e-300);
    let (loss, g) = (0..p.n())
        .into_par_iter()
        .chunks(ROWS)
        .map(|rows| {
            let mut g = vec![0f32; c * d + c];
            let mut loss = 0f64;
            let mut logit = vec![0f32; c];
            for i in rows {
                let z = p.row(i);
                for k in 0..c {
                    logit[k] = b[k] + dot(&w[k * d..(k + 1) * d], z);
                }
                let yk = p.y[i] as usize;
                let m = logit.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = m + logit.iter().map(|l| (l - m).exp()).sum::<f32>().ln();
                let wi = p.weight[i];
                loss += (wi * (lse - logit[yk])) as f64;
                for k in 0..c {
                    let r = wi * ((logit[k] - lse).exp() - if k == yk { 1.0 } else { 0.0 });
                    if r != 0.0 {
                        g[k * d..(k + 1) * d].iter_mut().zip(z).for_each(|(g, z)| *g += r * z);
                        g[c * d + k] += r;
                    }
                }
            }
            (loss, g)
        })
        .reduce(
            || (0.0, vec![0f32; c * d + c]),
            |(la, mut ga), (lb, gb)| {
                ga.iter_mut().zip(&gb).for_each(|(a, b)| *a += b);
                (la + lb, ga)
            },
        );
    let mut f = loss / total;
    for (i, gi) in grad.iter_mut().enumerate() {
        *gi = g[i] as f64 / total;
        if i < c * d {
            *gi += lambda * params[i];
            f += 0.5 * lambda * params[i] * params[i];
        }
    }
    f
}

/// Features wider than this are fitted without the covariance preconditioner (its D×D
/// factorisation would cost more than it saves).
pub const PRECONDITION_MAX_DIM: usize = 1024;

/// Lower Cholesky factor of a symmetric positive definite D×D matrix (row-major), in place.
pub fn cholesky(a: &mut [f64], d: usize) -> Result<()> {
    for j in 0..d {
        let mut v = a[j * d + j];
        for k in 0..j {
            v -= a[j * d + k] * a[j * d + k];
        }
        if v.is_nan() || v <= 0.0 {
            bail!("matrix is not positive definite");
        }
        let l = v.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut v = a[i * d + j];
            for k in 0..j {
                v -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = v / l;
        }
        for k in j + 1..d {
            a[j * d + k] = 0.0;
        }
    }
    Ok(())
}

/// Solve L Lᵀ x = b in place with the factor from `cholesky`.
pub fn cholesky_solve(l: &[f64], d: usize, b: &mut [f64]) {
    for i in 0..d {
        let mut v = b[i];
        for k in 0..i {
            v -= l[i * d + k] * b[k];
        }
        b[i] = v / l[i * d + i];
    }
    for i in (0..d).rev() {
        let mut v = b[i];
        for k in i + 1..d {
            v -= l[k * d + i] * b[k];
        }
        b[i] = v / l[i * d + i];
    }
}

/// The weighted second-moment matrix of the (standardized) rows, D×D: with the softmax's
/// p(1-p) weights it is the shape of the Hessian in each class's weights. Backbone features
/// are strongly correlated, which is what slows plain L-BFGS down. None above
/// `PRECONDITION_MAX_DIM` features.
pub fn second_moment(p: &Problem) -> Option<Vec<f64>> {
    let d = p.d;
    if d > PRECONDITION_MAX_DIM || p.n() == 0 || std::env::var_os("DNA_MAMBA_NO_PRECONDITIONER").is_some() {
        return None;
    }
    let total = p.total_weight().max(1e-300);
    let mut m = (0..p.n())
        .into_par_iter()
        .chunks(ROWS)
        .map(|rows| {
            let mut m = vec![0f64; d * d];
            for i in rows {
                let z = p.row(i);
                let w = p.weight[i] as f64;
                for a in 0..d {
                    let za = w * z[a] as f64;
                    let row = &mut m[a * d..a * d + a + 1];
                    row.iter_mut().zip(&z[..=a]).for_each(|(m, zb)| *m += za * *zb as f64);
                }
            }
            m
        })
        .reduce(
            || vec![0f64; d * d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    for a in 0..d {
        for b in 0..=a {
            m[a * d + b] /= total;
            m[b * d + a] = m[a * d + b];
        }
    }
    Some(m)
}

/// Typical p(1-p) of a fitted softmax: how much of the data's second moment the Hessian keeps.
const HESSIAN_WEIGHT: f64 = 0.1;

/// Cholesky factor of `HESSIAN_WEIGHT`·M + λI (+ a small ridge): the preconditioner for L2
/// penalty λ (near λI when the penalty dominates, near the data's shape when it does not).
pub fn preconditioner(m: &[f64], d: usize, lambda: f64) -> Option<Vec<f64>> {
    let trace = (0..d).map(|a| m[a * d + a]).sum::<f64>() / d as f64;
    let mut a: Vec<f64> = m.iter().map(|v| v * HESSIAN_WEIGHT).collect();
    for i in 0..d {
        a[i * d + i] += lambda + 1e-4 * HESSIAN_WEIGHT * trace.max(1e-12);
    }
    cholesky(&mut a, d).ok()?;
    Some(a)
}

/// Fit a linear softmax with L2 penalty `lambda`, optionally warm-started, preconditioned when
/// the features' `second_moment` is given.
pub fn fit_linear(p: &Problem, lambda: f64, start: Option<&[f64]>, opt: LbfgsOptions, moment: Option<&[f64]>) -> (Vec<f64>, LbfgsReport) {
    let x0 = start.map(|s| s.to_vec()).unwrap_or_else(|| vec![0.0; p.c * p.d + p.c]);
    let (c, d) = (p.c, p.d);
    let factor = moment.and_then(|m| preconditioner(m, d, lambda));
    let pre = |v: &mut [f64]| {
        if let Some(l) = &factor {
            for k in 0..c {
                cholesky_solve(l, d, &mut v[k * d..(k + 1) * d]);
            }
        }
    };
    lbfgs_pre(|x, g| linear_objective(p, x, lambda, g), x0, opt, &pre)
}

fn linear_net(params: &[f64], c: usize, d: usize) -> Net {
    let v: Vec<f32> = params.iter().map(|v| *v as f32).collect();
    Net::Linear { w: v[..c * d].to_vec(), b: v[c * d..].to_vec() }
}

/// Weighted mean log-loss of a net on a problem.
pub fn log_loss(net: &Net, p: &Problem) -> f64 {
    let (sum, wsum) = (0..p.n())
        .into_par_iter()
        .chunks(ROWS)
        .map(|rows| {
            let mut out = vec![0f32; p.c];
            let mut h = Vec::new();
            let (mut s, mut w) = (0f64, 0f64);
            for i in rows {
                net.logits(p.row(i), &mut h, &mut out);
                softmax(&mut out);
                s += -(p.weight[i] as f64) * (out[p.y[i] as usize].max(1e-12) as f64).ln();
                w += p.weight[i] as f64;
            }
            (s, w)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    sum / wsum.max(1e-300)
}

#[derive(Clone, Debug)]
pub struct MlpOptions {
    pub hidden: usize,
    pub max_epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    pub seed: u64,
}

impl Default for MlpOptions {
    fn default() -> Self {
        MlpOptions { hidden: 64, max_epochs: 200, batch: 128, lr: 1e-3, weight_decay: 1e-4, patience: 15, seed: 1 }
    }
}

struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    fn new(n: usize) -> Self {
        Adam { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }
    /// One AdamW step; `decay[i]` says whether parameter i is decayed (weights, not biases).
    fn step(&mut self, x: &mut [f32], g: &[f32], lr: f32, wd: f32, decay: &dyn Fn(usize) -> bool) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.t += 1;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        for i in 0..x.len() {
            self.m[i] = B1 * self.m[i] + (1.0 - B1) * g[i];
            self.v[i] = B2 * self.v[i] + (1.0 - B2) * g[i] * g[i];
            if decay(i) {
                x[i] -= lr * wd * x[i];
            }
            x[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + EPS);
        }
    }
}

/// Parameter layout of the MLP in one flat vector: w1 [H×D], b1 [H], w2 [C×H], b2 [C].
struct MlpShape {
    d: usize,
    h: usize,
    c: usize,
}

impl MlpShape {
    fn len(&self) -> usize {
        self.h * self.d + self.h + self.c * self.h + self.c
    }
    fn split<'a>(&self, v: &'a [f32]) -> (&'a [f32], &'a [f32], &'a [f32], &'a [f32]) {
        let (w1, r) = v.split_at(self.h * self.d);
        let (b1, r) = r.split_at(self.h);
        let (w2, b2) = r.split_at(self.c * self.h);
        (w1, b1, w2, b2)
    }
    fn net(&self, v: &[f32]) -> Net {
        let (w1, b1, w2, b2) = self.split(v);
        Net::Mlp { w1: w1.to_vec(), b1: b1.to_vec(), w2: w2.to_vec(), b2: b2.to_vec() }
    }
}

/// Gradient of the summed weighted cross-entropy of `rows` into a fresh vector.
fn mlp_grad(s: &MlpShape, params: &[f32], p: &Problem, rows: &[usize]) -> Vec<f32> {
    let (d, nh, c) = (s.d, s.h, s.c);
    rows.par_chunks(32)
        .map(|rows| {
            let (w1, b1, w2, b2) = s.split(params);
            let mut g = vec![0f32; s.len()];
            let mut h = vec![0f32; nh];
            let mut o = vec![0f32; c];
            let mut dh = vec![0f32; nh];
            for &i in rows {
                let z = p.row(i);
                for j in 0..nh {
                    h[j] = (b1[j] + dot(&w1[j * d..(j + 1) * d], z)).max(0.0);
                }
                for k in 0..c {
                    o[k] = b2[k] + dot(&w2[k * nh..(k + 1) * nh], &h);
                }
                softmax(&mut o);
                let wi = p.weight[i];
                let yk = p.y[i] as usize;
                dh.iter_mut().for_each(|v| *v = 0.0);
                let (gw1, r) = g.split_at_mut(nh * d);
                let (gb1, r) = r.split_at_mut(nh);
                let (gw2, gb2) = r.split_at_mut(c * nh);
                for k in 0..c {
                    let r = wi * (o[k] - if k == yk { 1.0 } else { 0.0 });
                    gb2[k] += r;
                    for j in 0..nh {
                        gw2[k * nh + j] += r * h[j];
                        dh[j] += r * w2[k * nh + j];
                    }
                }
                for j in 0..nh {
                    if h[j] > 0.0 && dh[j] != 0.0 {
                        gb1[j] += dh[j];
                        gw1[j * d..(j + 1) * d].iter_mut().zip(z).for_each(|(g, z)| *g += dh[j] * z);
                    }
                }
            }
            g
        })
        .reduce(
            || vec![0f32; s.len()],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// Fit the MLP with AdamW on `train`, keeping the epoch with the lowest loss on `val`.
pub fn fit_mlp(train: &Problem, val: &Problem, o: &MlpOptions) -> (Net, serde_json::Value) {
    let s = MlpShape { d: train.d, h: o.hidden, c: train.c };
    let mut rng = Rng::new(o.seed);
    let mut params = vec![0f32; s.len()];
    {
        let lim1 = (6.0 / s.d as f64).sqrt();
        let lim2 = (6.0 / (s.h + s.c) as f64).sqrt();
        let (n1, n2) = (s.h * s.d, s.c * s.h);
        for v in &mut params[..n1] {
            *v = ((rng.unit() * 2.0 - 1.0) * lim1) as f32;
        }
        let off = n1 + s.h;
        for v in &mut params[off..off + n2] {
            *v = ((rng.unit() * 2.0 - 1.0) * lim2) as f32;
        }
    }
    let decayed = |i: usize| i < s.h * s.d || (i >= s.h * s.d + s.h && i < s.h * s.d + s.h + s.c * s.h);
    let mut adam = Adam::new(s.len());
    let mut order: Vec<usize> = (0..train.n()).collect();
    let (mut best, mut best_loss, mut best_epoch) = (params.clone(), f64::INFINITY, 0);
    let mut epochs = 0;
    for epoch in 0..o.max_epochs {
        epochs = epoch + 1;
        rng.shuffle(&mut order);
        for batch in order.chunks(o.batch) {
            let mut g = mlp_grad(&s, &params, train, batch);
            let wsum: f32 = batch.iter().map(|&i| train.weight[i]).sum::<f32>().max(1e-12);
            g.iter_mut().for_each(|v| *v /= wsum);
            adam.step(&mut params, &g, o.lr, o.weight_decay, &decayed);
        }
        let loss = log_loss(&s.net(&params), val);
        if loss < best_loss - 1e-6 {
            best_loss = loss;
            best = params.clone();
            best_epoch = epoch + 1;
        } else if epoch + 1 - best_epoch >= o.patience {
            break;
        }
    }
    let info = json!({"optimizer": "adamw", "hidden": o.hidden, "lr": o.lr, "weight_decay": o.weight_decay,
        "batch": o.batch, "epochs_run": epochs, "best_epoch": best_epoch, "inner_val_log_loss": best_loss});
    (s.net(&best), info)
}

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

    #[test]
    fn lbfgs_minimises_rosenbrock() {
        let f = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let (x, rep) = lbfgs(f, vec![-1.2, 1.0], LbfgsOptions { max_iter: 1000, tol: 1e-10, ..Default::default() });
        assert!((x[0] - 1.0).abs() < 1e-4 && (x[1] - 1.0).abs() < 1e-4, "{x:?} {rep:?}");
    }

    #[test]
    fn lbfgs_solves_a_quadratic() {
        // f = ½ xᵀAx - bᵀx with A diagonal 1..20: minimum at x_i = b_i / A_i
        let f = |x: &[f64], g: &mut [f64]| {
            let mut v = 0.0;
            for i in 0..20 {
                let a = (i + 1) as f64;
                g[i] = a * x[i] - 1.0;
                v += 0.5 * a * x[i] * x[i] - x[i];
            }
            v
        };
        let (x, rep) = lbfgs(f, vec![0.0; 20], LbfgsOptions { tol: 1e-12, ..Default::default() });
        assert!(rep.converged);
        for (i, v) in x.iter().enumerate() {
            assert!((v - 1.0 / (i + 1) as f64).abs() < 1e-6, "{i}: {v}");
        }
    }

    #[test]
    fn cholesky_solves() {
        // A = [[4, 2], [2, 3]]: L = [[2, 0], [1, sqrt 2]]; A x = (2, 1) at x = (0.5, 0)
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        cholesky(&mut a, 2).unwrap();
        assert!((a[0] - 2.0).abs() < 1e-12 && (a[2] - 1.0).abs() < 1e-12 && (a[3] - 2f64.sqrt()).abs() < 1e-12 && a[1] == 0.0);
        let mut b = vec![2.0, 1.0];
        cholesky_solve(&a, 2, &mut b);
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12);
        assert!(cholesky(&mut [1.0, 2.0, 2.0, 1.0], 2).is_err());
    }

    #[test]
    fn preconditioning_reaches_the_same_optimum_sooner() {
        // 40 features in 5 groups of near-copies of a latent blob coordinate: standardized, their
        // second moment has 5 large eigenvalues and 35 tiny ones (condition ~10^4)
        let (u, mut y) = blobs(2000, 8);
        let mut rng = Rng::new(4);
        for v in y.iter_mut() {
            if rng.unit() < 0.25 {
                *v = rng.below(3) as u32; // not separable
            }
        }
        let (d, k) = (40, 5);
        let mut x = Vec::new();
        for row in u.chunks(k) {
            for j in 0..d {
                x.push(row[j % k] + 0.02 * (rng.unit() as f32 - 0.5) + 0.3 * row[(j + 1) % k] * (j / k) as f32 / 8.0);
            }
        }
        let (mu, sd) = standardizer(&x, d);
        let z = standardize(&x, d, &mu, &sd);
        let w = vec![1.0; y.len()];
        let p = Problem { z: &z, d, y: &y, weight: &w, c: 3 };
        let moment = second_moment(&p).unwrap();
        let o = LbfgsOptions { max_iter: 3000, tol: 1e-6, ..Default::default() };
        let (_, plain) = fit_linear(&p, 1e-4, None, o, None);
        let (_, pre) = fit_linear(&p, 1e-4, None, o, Some(&moment));
        assert!((plain.f - pre.f).abs() < 1e-4 * plain.f.abs(), "{plain:?} vs {pre:?}");
        assert!(pre.iterations * 2 <= plain.iterations, "preconditioned {pre:?} vs plain {plain:?}");
    }

    fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
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

    #[test]
    fn linear_gradient_matches_finite_differences() {
        let (x, y) = blobs(30, 3);
        let w = row_weights(&y, 3, true);
        let p = Problem { z: &x, d: 5, y: &y, weight: &w, c: 3 };
        let mut rng = Rng::new(9);
        let params: Vec<f64> = (0..18).map(|_| rng.unit() - 0.5).collect();
        let mut g = vec![0.0; 18];
        linear_objective(&p, &params, 0.1, &mut g);
        for i in 0..18 {
            let (mut a, mut b) = (params.clone(), params.clone());
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let mut tmp = vec![0.0; 18];
            let num = (linear_objective(&p, &a, 0.1, &mut tmp) - linear_objective(&p, &b, 0.1, &mut tmp)) / 2e-3;
            assert!((num - g[i]).abs() < 1e-3, "param {i}: {num} vs {}", g[i]);
        }
    }

    #[test]
    fn mlp_gradient_matches_finite_differences() {
        let (x, y) = blobs(12, 4);
        let w = vec![1.0; 12];
        let p = Problem { z: &x, d: 5, y: &y, weight: &w, c: 3 };
        let s = MlpShape { d: 5, h: 4, c: 3 };
        let mut rng = Rng::new(2);
        let mut params: Vec<f32> = (0..s.len()).map(|_| (rng.unit() - 0.5) as f32).collect();
        // hidden units 0-2 always active, unit 3 always off: no ReLU kink between the probes
        let b1 = s.h * s.d;
        params[b1..b1 + 4].copy_from_slice(&[8.0, 8.0, 8.0, -8.0]);
        let rows: Vec<usize> = (0..12).collect();
        let g = mlp_grad(&s, &params, &p, &rows);
        let loss = |v: &[f32]| log_loss(&s.net(v), &p) * 12.0;
        for i in 0..s.len() {
            let (mut a, mut b) = (params.clone(), params.clone());
            a[i] += 1e-2;
            b[i] -= 1e-2;
            let num = (loss(&a) - loss(&b)) / 2e-2;
            assert!((num - g[i] as f64).abs() < 2e-2 * (1.0 + num.abs()), "param {i}: {num} vs {}", g[i]);
        }
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
    fn split_is_stratified_and_disjoint() {
        let y: Vec<u32> = (0..100).map(|i| if i < 90 { 0 } else { 1 }).collect();
        let (a, b) = stratified_split(&y, 2, 0.2, 7);
        assert_eq!(a.len() + b.len(), 100);
        assert!(a.iter().all(|i| !b.contains(i)));
        assert_eq!(b.iter().filter(|&&i| y[i] == 1).count(), 2);
        assert_eq!(b.iter().filter(|&&i| y[i] == 0).count(), 18);
        assert_eq!(stratified_split(&y, 2, 0.2, 7), (a, b));
    }

    #[test]
    fn balanced_weights_equalise_classes() {
        let y = [0, 0, 0, 1];
        let w = row_weights(&y, 2, true);
        assert!((w[0] * 3.0 - w[3]).abs() < 1e-6);
        assert!((w.iter().sum::<f32>() - 4.0).abs() < 1e-5);
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
