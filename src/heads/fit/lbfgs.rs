//! L-BFGS (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 7.4 two-loop
//! recursion, Armijo backtracking §3.1). It knows nothing of heads, only a smooth function of
//! f64 parameters, so that it is tested on functions whose minimum is known.

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
}
