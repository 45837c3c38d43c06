//! The masked-LM head (model-format.md §1.5.5): tied embedding for Ph, RCPS head for PS.

use super::Model;

/// Raw logits over the padded vocabulary for one final hidden row.
pub fn logits(model: &Model, row: &[f32], out: &mut [f32]) {
    for (v, o) in out.iter_mut().enumerate().take(model.config.vocab_padded()) {
        *o = logit(model, row, v);
    }
}

/// The logit of token `v` for one final hidden row.
fn logit(model: &Model, row: &[f32], v: usize) -> f32 {
    let d = model.config.d_model;
    let head = model.weights.head();
    let mut s = dot(&row[..d], &head[v * d..(v + 1) * d]);
    if model.config.rcps {
        // ⟨flipC(o2), E[comp v]⟩ = ⟨o2, flipC(E[comp v])⟩
        let c = model.weights.complement[v];
        let ec = &head[c * d..(c + 1) * d];
        s += row[d..2 * d].iter().zip(ec.iter().rev()).map(|(a, b)| a * b).sum::<f32>();
    }
    s
}

/// Dot product with eight partial sums, so that it vectorizes (a plain f32 `sum` is
/// sequential): per-position log-probabilities of long tiles are computed on the host.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Log-probabilities over A, C, G, T of one final hidden row: the log-softmax of the
/// logits restricted to those four ids (the other twelve are never computed).
pub fn row_acgt_log_probs(model: &Model, row: &[f32]) -> [f32; 4] {
    let l = model.vocab.acgt.map(|t| logit(model, row, t as usize));
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + l.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
    l.map(|v| v - lse)
}
