//! One fitting problem (standardized rows, labels, row weights) and the loss every fitter is
//! judged by on it.

use rayon::prelude::*;

use crate::heads::{softmax, Net};

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
    pub(super) fn row(&self, i: usize) -> &'a [f32] {
        &self.z[i * self.d..(i + 1) * self.d]
    }
    pub(super) fn total_weight(&self) -> f64 {
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

/// Rows per parallel work item.
pub(super) const ROWS: usize = 512;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_weights_equalise_classes() {
        let y = [0, 0, 0, 1];
        let w = row_weights(&y, 2, true);
        assert!((w[0] * 3.0 - w[3]).abs() < 1e-6);
        assert!((w.iter().sum::<f32>() - 4.0).abs() < 1e-5);
    }
}
