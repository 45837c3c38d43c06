//! Chunking, streaming and tiling: the long-context machinery against one plain pass.

mod common;

use common::*;
use dna_mamba::embed::{Feature, Strand};
use dna_mamba::tiling;

const BIG: usize = 1 << 30;

#[test]
fn chunk_size_does_not_change_results() {
    let seq = random_dna(701, 3);
    for m in ["ph", "ps", "causal"] {
        let model = load(m);
        let base = run(&model, &seq, Strand::Fwd, Feature::Hidden, 1024, true, BIG, 0, false);
        for (chunk, share) in [(1, true), (1, false), (7, false), (100, true), (333, false), (701, false)] {
            let got = run(&model, &seq, Strand::Fwd, Feature::Hidden, chunk, share, BIG, 0, false);
            let err = rel_err(&got, &base);
            assert!(err <= 1e-5, "{m} chunk {chunk} share {share}: {err:e}");
        }
    }
}

#[test]
fn causal_segments_equal_one_pass() {
    let seq = random_dna(1000, 5);
    let model = load("causal");
    let one = run(&model, &seq, Strand::Fwd, Feature::Hidden, 1024, true, BIG, 0, false);
    for (context, chunk) in [(64, 1024), (37, 5), (999, 10), (4, 1)] {
        let got = run(&model, &seq, Strand::Fwd, Feature::Hidden, chunk, true, context, 0, false);
        let err = rel_err(&got, &one);
        assert!(err <= 1e-5, "segments of {context}: {err:e}");
    }
    // and logits through the same path
    let one = run(&model, &seq, Strand::Fwd, Feature::Logits, 1024, true, BIG, 0, false);
    let got = run(&model, &seq, Strand::Fwd, Feature::Logits, 16, true, 50, 0, false);
    assert!(rel_err(&got, &one) <= 1e-5);
}

#[test]
fn tiling_equals_one_pass_when_the_context_covers_the_record() {
    let seq = random_dna(300, 9);
    for m in ["ph", "ps"] {
        let model = load(m);
        let one = run(&model, &seq, Strand::Both, Feature::Hidden, 64, true, BIG, 0, false);
        let exact = run(&model, &seq, Strand::Both, Feature::Hidden, 64, true, 300, 10, false);
        assert_eq!(one, exact, "{m}: context == length must be one pass");
    }
}

/// Tiled outputs differ from one pass only through the context each tile lacks; the
/// difference is measured and printed, and shrinks as tiles grow. (These random fixture
/// models have scan decay times of up to ~1000 positions, so the difference is spread over
/// the whole kept part rather than concentrated at its ends.)
#[test]
fn tiling_difference_is_measured_and_shrinks_with_wider_tiles() {
    let len = 3000;
    let seq = random_dna(len, 11);
    for m in ["ph", "ps"] {
        let model = load(m);
        let d = model.config.d_model;
        let one = run(&model, &seq, Strand::Both, Feature::Hidden, 256, true, BIG, 0, false);
        let (context, overlap) = (512, 128);
        let tiled = run(&model, &seq, Strand::Both, Feature::Hidden, 256, true, context, overlap, false);
        let tiles = tiling::plan(len, context, overlap);
        let (mut centre, mut edge) = (Vec::new(), Vec::new());
        for t in &tiles {
            for pos in t.keep_start..t.keep_end {
                let e = rel_err(&tiled[pos * d..(pos + 1) * d], &one[pos * d..(pos + 1) * d]);
                // distance to the nearest edge that cuts context away (record ends cut nothing)
                let left = if t.start > 0 { pos - t.start } else { usize::MAX };
                let right = if t.end < len { t.end - 1 - pos } else { usize::MAX };
                let from_edge = left.min(right);
                let near_cut = (t.keep_start > 0 && pos < t.keep_start + 16) || (t.keep_end < len && pos + 16 >= t.keep_end);
                if from_edge >= context / 3 {
                    centre.push(e);
                } else if near_cut {
                    edge.push(e);
                }
            }
        }
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let total = rel_err(&tiled, &one);
        eprintln!(
            "{m}: {} tiles of {context} (overlap {overlap}); relative difference to one pass: whole {total:.2e}, \
             at least context/3 from a cut edge max {:.2e}, at the kept parts' ends max {:.2e}",
            tiles.len(),
            max(&centre),
            max(&edge)
        );
        assert!(total < 0.1, "{m}: tiling changed the output wholesale ({total:e})");
        // more context per tile brings the result closer to one pass
        let wider = run(&model, &seq, Strand::Both, Feature::Hidden, 256, true, 1600, 400, false);
        let wider_err = rel_err(&wider, &one);
        eprintln!("{m}: with tiles of 1600 (overlap 400): whole {wider_err:.2e}");
        assert!(wider_err < total, "{m}: wider tiles should be closer to one pass");
    }
}

/// Packed contexts on the CPU: several records in one context (`Engine::run_packed`) give each
/// record exactly the rows of a run over that record alone (the same operations record by
/// record, state restarting at each boundary in both walk directions), for Ph, PS and causal
/// models, with the tied projections shared and not shared, chunks shorter and longer than
/// the records; and the embedder's packed pooled means equal the per-record ones.
#[test]
fn cpu_packed_records_equal_each_record_alone() {
    use dna_mamba::backend::cpu::Cpu;
    use dna_mamba::model::forward::Engine;
    let lens = [1usize, 150, 151, 2, 700, 3, 1000, 37];
    for name in ["ph", "ps", "causal"] {
        let model = load(name);
        let hw = model.config.hidden_width();
        let recs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &n)| tokens(&random_dna(n, 500 + i as u64))).collect();
        let mut starts = Vec::new();
        let mut all = Vec::new();
        for r in &recs {
            starts.push(all.len());
            all.extend_from_slice(r);
        }
        for (chunk, share) in [(1024usize, 1usize << 30), (64, 1 << 30), (1024, 0)] {
            let cpu = || Cpu::with_chunk(model.clone(), chunk).with_share_bytes(share);
            let mut packed = Engine::new(cpu(), model.config.clone());
            assert!(packed.supports_packing());
            packed.run_packed(&all, &starts).unwrap();
            let mut got = vec![0.0; all.len() * hw];
            packed.read_rows(0, &mut got).unwrap();
            let mut alone = Engine::new(cpu(), model.config.clone());
            for (r, &s) in recs.iter().zip(&starts) {
                alone.run(r).unwrap();
                let mut want = vec![0.0; r.len() * hw];
                alone.read_rows(0, &mut want).unwrap();
                assert!(got[s * hw..(s + r.len()) * hw] == want[..], "{name} chunk {chunk} share {share}: record at {s} ({} bases) differs packed", r.len());
            }
            // a plain run after a packed one sees no record boundaries left behind
            packed.run(&all).unwrap();
            let mut plain = vec![0.0; all.len() * hw];
            packed.read_rows(0, &mut plain).unwrap();
            let mut fresh = Engine::new(cpu(), model.config.clone());
            fresh.run(&all).unwrap();
            let mut want = vec![0.0; all.len() * hw];
            fresh.read_rows(0, &mut want).unwrap();
            assert!(plain == want, "{name}: a run after a packed one differs");
        }
    }
}
