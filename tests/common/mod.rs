//! Shared helpers for integration tests: fixtures, a collecting sink, error norms.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dna_mamba::backend::cpu::Cpu;
use dna_mamba::embed::{Embedder, Feature, Sink, Strand};
use dna_mamba::model::Model;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// (id, sequence) of tests/fixtures/inputs.fa.
pub fn inputs() -> Vec<(String, Vec<u8>)> {
    inputs_in(&fixtures())
}

/// (id, sequence) of `dir`/inputs.fa.
pub fn inputs_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut r = needletail::parse_fastx_file(dir.join("inputs.fa")).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next() {
        let rec = rec.unwrap();
        out.push((String::from_utf8(rec.id().to_vec()).unwrap(), rec.seq().to_vec()));
    }
    out
}

pub fn load(name: &str) -> Arc<Model> {
    Arc::new(Model::load(&fixtures().join(name)).unwrap())
}

/// Expected tensor `key` of fixture model `name` as (shape, values).
pub fn expected(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join(name).join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap_or_else(|_| panic!("{name}: no {key}"));
    let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (t.shape().to_vec(), v)
}

/// Collects every row of a record (summing weighted passes, like a linear sink would).
pub struct Collect {
    pub width: usize,
    pub rows: Vec<f32>,
    pub linear: bool,
    pub adds: usize,
}

impl Collect {
    pub fn new(len: usize, width: usize, linear: bool) -> Self {
        Collect { width, rows: vec![0.0; len * width], linear, adds: 0 }
    }
}

impl Sink for Collect {
    fn linear(&self) -> bool {
        self.linear
    }
    fn add(&mut self, pos: usize, row: &[f32], weight: f32) -> anyhow::Result<()> {
        assert_eq!(row.len(), self.width);
        if !self.linear {
            assert_eq!(weight, 1.0);
        }
        self.adds += 1;
        for (o, v) in self.rows[pos * self.width..][..self.width].iter_mut().zip(row) {
            *o += weight * v;
        }
        Ok(())
    }
}

/// Per-position rows of `seq` through `model` on the CPU backend.
/// `share`: whether the tied in/out projections may be computed once for both directions.
#[allow(clippy::too_many_arguments)]
pub fn run(model: &Arc<Model>, seq: &[u8], strand: Strand, feature: Feature, chunk: usize, share: bool, context: usize, overlap: usize, linear: bool) -> Vec<f32> {
    let mut tokens = Vec::new();
    dna_mamba::tokenizer::encode_into(seq, &mut tokens);
    let cpu = Cpu::with_chunk(model.clone(), chunk).with_share_bytes(if share { usize::MAX } else { 0 });
    let mut e = Embedder::new(cpu, model.clone(), strand, feature, context, overlap).unwrap();
    let mut sink = Collect::new(tokens.len(), e.width(), linear);
    e.record(&tokens, &mut sink, &mut |_| {}).unwrap();
    sink.rows
}

/// A clean failure of the binary: non-zero exit, exactly one `error:` line naming `needle`, no panic.
pub fn assert_clean_failure(o: &std::process::Output, what: &str, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what} should fail");
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    let lines: Vec<_> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one error line, got {err}");
    assert!(lines[0].contains(needle), "{what}: {:?} does not mention {needle:?}", lines[0]);
}

/// ||a - b|| / ||b||
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

pub fn random_dna(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            b"ACGT"[(s >> 33) as usize % 4]
        })
        .collect()
}

/// Bases as Caduceus token ids (the fixture models' vocabulary).
pub fn tokens(seq: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    dna_mamba::model::vocab::caduceus().encode_into(seq, &mut t);
    t
}

/// [MASK] of the Caduceus vocabulary.
pub fn mask_id() -> u8 {
    dna_mamba::model::vocab::caduceus().mask.expect("Caduceus has [MASK]")
}
