//! The backbone fingerprint a head records: a head fitted on one backbone reads nonsense on
//! another, so `classify` compares it before running.

use crate::model::Model;

/// Hash of the architecture and every weight (as the f32 values computed with, so a BF16 file
/// and its F32 widening agree), 128 bits as hex.
pub fn fingerprint(model: &Model) -> String {
    let cfg = &model.config;
    let w = &model.weights;
    let mut h = Hasher::new();
    for v in [cfg.d_model, cfg.n_layer, cfg.vocab_padded(), cfg.d_state, cfg.d_conv, cfg.d_inner(), cfg.dt_rank()] {
        h.word(v as u64);
    }
    for b in [cfg.bidirectional, cfg.rcps, cfg.weight_tie, cfg.fused_add_norm] {
        h.word(b as u64);
    }
    h.floats(&w.embedding);
    for layer in &w.layers {
        h.floats(&layer.norm);
        for m in std::iter::once(&layer.fwd).chain(layer.rev.as_ref()) {
            h.floats(&m.in_proj);
            h.floats(&m.conv_w);
            h.floats(&m.conv_b);
            h.floats(&m.x_proj);
            h.floats(&m.dt_w);
            h.floats(&m.dt_b);
            h.floats(&m.a);
            h.floats(&m.d);
            h.floats(&m.out_proj);
        }
    }
    h.floats(&w.norm_f);
    if let Some(head) = &w.lm_head {
        h.floats(head);
    }
    h.finish()
}

/// Two independent 64-bit multiply-xorshift lanes over 32-bit words (not cryptographic: it
/// tells checkpoints apart, it does not defend against forgery).
struct Hasher {
    a: u64,
    b: u64,
}

impl Hasher {
    fn new() -> Self {
        Hasher { a: 0x243F_6A88_85A3_08D3, b: 0x1319_8A2E_0370_7344 }
    }
    fn word(&mut self, v: u64) {
        self.a = (self.a ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        self.b = (self.b ^ v.rotate_left(17)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(31);
    }
    fn floats(&mut self, v: &[f32]) {
        self.word(v.len() as u64);
        for x in v {
            self.word(x.to_bits() as u64);
        }
    }
    fn finish(self) -> String {
        fn mix(mut z: u64) -> u64 {
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        format!("{:016x}{:016x}", mix(self.a), mix(self.b ^ self.a.rotate_left(7)))
    }
}

