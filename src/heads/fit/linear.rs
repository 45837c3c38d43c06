//! The linear softmax head: its penalised cross-entropy objective, minimised with L-BFGS.

use rayon::prelude::*;

use super::lbfgs::{lbfgs_pre, LbfgsOptions, LbfgsReport};
use super::precondition::{cholesky_solve, preconditioner};
use super::problem::{Problem, ROWS};
use crate::heads::{dot, Net};

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

pub(super) fn linear_net(params: &[f64], c: usize, d: usize) -> Net {
    let v: Vec<f32> = params.iter().map(|v| *v as f32).collect();
    Net::Linear { w: v[..c * d].to_vec(), b: v[c * d..].to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::fit::tests::blobs;
    use crate::heads::fit::{row_weights, Rng};

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
}
