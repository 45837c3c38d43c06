//! AdamW (Loshchilov & Hutter 2019: Adam with decoupled weight decay), the MLP's optimiser:
//! decoupled, so that Adam's per-parameter step sizes do not rescale the decay, as they would
//! an L2 term in the gradient.

pub(super) struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    pub(super) fn new(n: usize) -> Self {
        Adam { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }
    /// One AdamW step; `decay[i]` says whether parameter i is decayed (weights, not biases).
    pub(super) fn step(&mut self, x: &mut [f32], g: &[f32], lr: f32, wd: f32, decay: &dyn Fn(usize) -> bool) {
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
