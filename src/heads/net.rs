//! The network of a head after standardization, and the two vector operations it and the
//! fitters share.

use super::Kind;

/// Weights of the network after standardization.
#[derive(Clone, Debug, PartialEq)]
pub enum Net {
    /// w: [C, D], b: [C]
    Linear { w: Vec<f32>, b: Vec<f32> },
    /// w1: [H, D], b1: [H], w2: [C, H], b2: [C]
    Mlp { w1: Vec<f32>, b1: Vec<f32>, w2: Vec<f32>, b2: Vec<f32> },
}

impl Net {
    pub fn kind(&self) -> Kind {
        match self {
            Net::Linear { .. } => Kind::Linear,
            Net::Mlp { .. } => Kind::Mlp,
        }
    }

    /// Hidden width of an MLP.
    pub fn hidden(&self) -> Option<usize> {
        match self {
            Net::Linear { .. } => None,
            Net::Mlp { b1, .. } => Some(b1.len()),
        }
    }

    /// Logits of one standardized feature vector `z` into `out` ([C]); `h` is scratch.
    pub fn logits(&self, z: &[f32], h: &mut Vec<f32>, out: &mut [f32]) {
        let d = z.len();
        match self {
            Net::Linear { w, b } => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o = b[c] + dot(&w[c * d..(c + 1) * d], z);
                }
            }
            Net::Mlp { w1, b1, w2, b2 } => {
                let nh = b1.len();
                h.resize(nh, 0.0);
                for (j, hj) in h.iter_mut().enumerate() {
                    *hj = (b1[j] + dot(&w1[j * d..(j + 1) * d], z)).max(0.0);
                }
                for (c, o) in out.iter_mut().enumerate() {
                    *o = b2[c] + dot(&w2[c * nh..(c + 1) * nh], h);
                }
            }
        }
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // sixteen independent accumulators: the compiler keeps them in vector registers
    const L: usize = 16;
    let mut s = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            s[i] += x[i] * y[i];
        }
    }
    let mut t = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        t += x * y;
    }
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            s[i] += s[i + w];
        }
    }
    s[0] + t
}

/// In-place softmax.
pub fn softmax(v: &mut [f32]) {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    for x in v.iter_mut() {
        *x /= s;
    }
}

