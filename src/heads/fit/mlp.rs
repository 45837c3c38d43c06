//! The one-hidden-layer head: mini-batch AdamW, early-stopped on an inner validation loss
//! (the best epoch is kept).

use rayon::prelude::*;
use serde_json::json;

use super::adamw::Adam;
use super::problem::{log_loss, Problem};
use super::rng::Rng;
use crate::heads::{dot, softmax, Net};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::fit::tests::blobs;

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
}
