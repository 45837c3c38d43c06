//! The covariance preconditioner of the linear fit: backbone features are strongly correlated,
//! and L-BFGS started from the identity needs many iterations to learn that shape.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::problem::{Problem, ROWS};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::fit::linear::fit_linear;
    use crate::heads::fit::tests::blobs;
    use crate::heads::fit::{standardize, standardizer, LbfgsOptions, Rng};

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
}
