//! The CPU path against the independent float64 reference (tests/reference/caduceus_ref.py).
//! Tolerance: <= 1e-4 norm-wise relative error per record and output.

mod common;

use common::*;
use dna_mamba::embed::{Feature, Strand};

const TOL: f64 = 1e-4;
const MODELS: [&str; 5] = ["ph", "ps", "causal", "ph_bf16", "ph_d20"];

fn check(model_name: &str, key: &str, strand: Strand, feature: Feature, chunk: usize) {
    for share in [true, false] {
        check_one(model_name, key, strand, feature, chunk, share);
    }
}

fn check_one(model_name: &str, key: &str, strand: Strand, feature: Feature, chunk: usize, share: bool) {
    let model = load(model_name);
    for (id, seq) in inputs() {
        let (shape, want) = expected(model_name, &format!("{key}.{id}"));
        for linear in [false, true] {
            let got = run(&model, &seq, strand, feature, chunk, share, 1 << 20, 0, linear);
            assert_eq!(got.len(), shape.iter().product::<usize>(), "{model_name} {key}.{id} shape {shape:?}");
            let err = rel_err(&got, &want);
            eprintln!("{model_name} {key}.{id} chunk {chunk} share {share}: {err:.1e}");
            assert!(err <= TOL, "{model_name} {key}.{id} chunk {chunk} share {share}: relative error {err:.3e}");
        }
    }
}

#[test]
fn hidden_states_match_reference() {
    for m in MODELS {
        check(m, "hidden", Strand::Fwd, Feature::Hidden, 1024);
    }
}

#[test]
fn strand_views_match_reference() {
    for m in MODELS {
        check(m, "rc", Strand::Rc, Feature::Hidden, 1024);
        check(m, "both", Strand::Both, Feature::Hidden, 1024);
    }
}

#[test]
fn logits_match_reference() {
    for m in MODELS {
        check(m, "logits", Strand::Fwd, Feature::RawLogits, 1024);
        check(m, "lp_fwd", Strand::Fwd, Feature::Logits, 1024);
        check(m, "lp_both", Strand::Both, Feature::Logits, 1024);
    }
}

#[test]
fn chunking_matches_reference() {
    // chunk 1 and chunks that divide nothing: conv and scan state must carry across chunks
    for m in MODELS {
        for chunk in [1, 3, 7, 64] {
            check(m, "hidden", Strand::Fwd, Feature::Hidden, chunk);
        }
    }
}
