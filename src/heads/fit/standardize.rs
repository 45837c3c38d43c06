//! Standardized features: every fitter works on (x - mu) / sd, and the head stores mu and sd
//! to do the same at prediction time.

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
