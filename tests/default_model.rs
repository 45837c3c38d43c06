//! The default model (models/default, trained by train/train.py) run by the Rust CPU engine against
//! the PyTorch training model: fp32 raw logits of held-out sequences computed on the GPU by the
//! training code (tests/fixtures/default_parity/expected.safetensors, `logits.<id>` [L, 16]).
//! Tolerance: <= 1e-4 norm-wise relative error per record.
#![cfg(feature = "builtin-model")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{rel_err, run};
use dna_mamba::embed::{Feature, Strand};
use dna_mamba::model::Model;

const TOL: f64 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/default_parity")
}

fn inputs() -> Vec<(String, Vec<u8>)> {
    common::inputs_in(&fixture())
}

fn expected(key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture().join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap_or_else(|_| panic!("no {key} in the fixture"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (t.shape().to_vec(), v)
}

fn model() -> Arc<Model> {
    Arc::new(Model::load(&root().join("models/default")).unwrap())
}

#[test]
fn default_model_is_small_enough_to_embed() {
    let len = std::fs::metadata(root().join("models/default/model.safetensors")).unwrap().len();
    assert!(len <= 16_000_000, "models/default/model.safetensors is {len} bytes (> 16 MB)");
}

#[test]
fn default_model_matches_pytorch_logits() {
    let model = model();
    let recs = inputs();
    assert!(recs.len() >= 3);
    assert!(recs.iter().any(|(_, s)| s.contains(&b'N')), "one fixture sequence must contain N");
    for (id, seq) in &recs {
        let (shape, want) = expected(&format!("logits.{id}"));
        assert_eq!(shape, vec![seq.len(), 16], "{id}");
        for (chunk, share) in [(1024, true), (1024, false), (97, true)] {
            let got = run(&model, seq, Strand::Fwd, Feature::RawLogits, chunk, share, 1 << 20, 0, false);
            assert_eq!(got.len(), want.len(), "{id}");
            let err = rel_err(&got, &want);
            eprintln!("{id}: chunk {chunk} share {share}: relative error {err:.2e}");
            assert!(err <= TOL, "{id} (len {}, chunk {chunk}, share {share}): relative error {err:.3e}", seq.len());
        }
    }
}

#[test]
fn default_model_predicts_masked_bases() {
    // Sanity on the fixture's known bases: argmax of the A/C/G/T logits at unmasked positions
    // should mostly reproduce the input (the MLM objective also trains on unmasked 10 % keep).
    let model = model();
    for (id, seq) in inputs() {
        let got = run(&model, &seq, Strand::Fwd, Feature::RawLogits, 1024, true, 1 << 20, 0, false);
        let (mut n, mut hit) = (0usize, 0usize);
        for (i, &b) in seq.iter().enumerate() {
            let want = match b.to_ascii_uppercase() {
                b'A' => 0,
                b'C' => 1,
                b'G' => 2,
                b'T' => 3,
                _ => continue,
            };
            let row = &got[i * 16 + 7..i * 16 + 11];
            let arg = (0..4).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            n += 1;
            hit += (arg == want) as usize;
        }
        assert!(hit as f64 >= 0.9 * n as f64, "{id}: unmasked identity {hit}/{n}");
    }
}
