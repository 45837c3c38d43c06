//! The masked-LM head (model-format.md §1.5.5): tied embedding for Ph, RCPS head for PS.

use super::Model;
use crate::tokenizer::ACGT;

/// Raw logits over the padded vocabulary for one final hidden row.
pub fn logits(model: &Model, row: &[f32], out: &mut [f32]) {
    let cfg = &model.config;
    let d = cfg.d_model;
    let head = model.weights.head();
    let comp = &model.weights.complement;
    for (v, o) in out.iter_mut().enumerate().take(cfg.vocab_padded()) {
        let e = &head[v * d..(v + 1) * d];
        let mut s: f32 = row[..d].iter().zip(e).map(|(a, b)| a * b).sum();
        if cfg.rcps {
            // ⟨flipC(o2), E[comp v]⟩
            let ec = &head[comp[v] * d..(comp[v] + 1) * d];
            s += row[d..2 * d].iter().rev().zip(ec).map(|(a, b)| a * b).sum::<f32>();
        }
        *o = s;
    }
}

/// Log-probabilities over A, C, G, T: log-softmax of the logits restricted to those four ids.
pub fn acgt_log_probs(logits: &[f32]) -> [f32; 4] {
    let l = ACGT.map(|t| logits[t as usize]);
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + l.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
    l.map(|v| v - lse)
}
