//! The CUDA backend against the CPU backend (fresh random models and inputs) and against the
//! float64 reference fixtures. Tolerance: <= 1e-6 norm-wise relative error in f32, <= 1e-2
//! in bf16 (against the CPU's f32; <= 3e-3 on the 16-layer d_model 256 shape). Packed
//! contexts (several records in one) against each record run alone on the CPU. Both scan
//! paths (one-pass, the default, and the old two-pass) are checked on slow-decay models.
//!
//! Without a GPU, driver or CUDA libraries each test prints why and passes (CI has no GPU).
//! `cargo test --release --test cuda -- --ignored --nocapture bench` prints throughput.
#![cfg(feature = "cuda")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::*;
use dna_mamba::backend::cpu::Cpu;
use dna_mamba::backend::cuda::{self, Cuda, Scan};
use dna_mamba::backend::{Backend, Precision};
use dna_mamba::embed::{Embedder, Feature, Strand};
use dna_mamba::model::forward::Engine;
use dna_mamba::pool::ReadPool;
use dna_mamba::model::Model;
use safetensors::{tensor::TensorView, Dtype};

const TOL: f64 = 1e-6;
/// bf16 against f32 on the 16-layer d_model 256 random shape.
const TOL_BF16_DEEP: f64 = 3e-3;
const TOL_BF16: f64 = 1e-2;

fn gpu(test: &str) -> bool {
    match cuda::available() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{test}: skipped, no usable CUDA device: {e}");
            false
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ph,
    Ps,
    Causal,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.sym() * scale).collect()
    }
}

/// Write a random Caduceus checkpoint (initialised the way the reference code does, so the
/// activations have realistic ranges) into `dir`.
fn write_model(dir: &Path, kind: Kind, d: usize, n_layer: usize, tie: bool, seed: u64) {
    write_model_with(dir, kind, d, n_layer, tie, seed, 16, 4)
}

/// As `write_model`, with a chosen d_state and d_conv (compile-time sizes of the kernels).
#[allow(clippy::too_many_arguments)]
fn write_model_with(dir: &Path, kind: Kind, d: usize, n_layer: usize, tie: bool, seed: u64, n: usize, k: usize) {
    write_model_full(dir, kind, d, n_layer, tie, seed, n, k, Decay::Init)
}

/// Decay rates of a random model's states (see `write_model_full`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decay {
    /// As initialised: Δ 1e-3 .. 1e-1, A = -1 .. -16.
    Init,
    /// Two channels in three slow, one fast.
    Slow,
    /// Every channel fast (Δ 0.3 .. 3): the state forgets within a few steps.
    Fast,
}

/// `slow`: two channels in three decay slowly (|A| 0.1 .. 1.8, Δ 2e-3 .. 1e-2: the state keeps
/// e^-1 of itself over 500 to 5,000 steps, so it crosses many scan segments and chunks), the
/// third fast (Δ 0.3 .. 3, A as initialised: gone within a few steps), so the one-pass scan's
/// correction stops at different steps in one warp.
#[allow(clippy::too_many_arguments)]
fn write_model_full(dir: &Path, kind: Kind, d: usize, n_layer: usize, tie: bool, seed: u64, n: usize, k: usize, decay: Decay) {
    let slow = decay == Decay::Slow;
    let (bidirectional, rcps) = match kind {
        Kind::Ph => (true, false),
        Kind::Ps => (true, true),
        Kind::Causal => (false, false),
    };
    let config = serde_json::json!({
        "model_type": "caduceus", "d_model": d, "n_layer": n_layer, "vocab_size": 12,
        "pad_vocab_size_multiple": 8, "bidirectional": bidirectional,
        "bidirectional_weight_tie": tie, "rcps": rcps, "fused_add_norm": true,
        "ssm_cfg": {"d_state": n, "d_conv": k},
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let (v, di, rk) = (16, 2 * d, d.div_ceil(16));
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let emb = if rcps { "embeddings.word_embeddings.embedding.weight" } else { "embeddings.word_embeddings.weight" };
    tensors.push((format!("backbone.{emb}"), vec![v, d], rng.vec(v * d, 1.0)));
    let mixer = if rcps { "mixer.submodule." } else { "mixer." };
    for i in 0..n_layer {
        let norm: Vec<f32> = (0..d).map(|_| 1.0 + 0.2 * rng.sym()).collect();
        tensors.push((format!("backbone.layers.{i}.norm.weight"), vec![d], norm));
        let dirs: &[&str] = if bidirectional { &["mamba_fwd", "mamba_rev"] } else { &["mamba_fwd"] };
        for (j, dir) in dirs.iter().enumerate() {
            let p = format!("backbone.layers.{i}.{mixer}{dir}.");
            if j == 0 || !tie {
                tensors.push((format!("{p}in_proj.weight"), vec![2 * di, d], rng.vec(2 * di * d, 1.0 / (d as f32).sqrt())));
                tensors.push((format!("{p}out_proj.weight"), vec![d, di], rng.vec(d * di, 1.0 / (di as f32).sqrt())));
            }
            tensors.push((format!("{p}conv1d.weight"), vec![di, 1, k], rng.vec(di * k, 0.5)));
            tensors.push((format!("{p}conv1d.bias"), vec![di], rng.vec(di, 0.5)));
            tensors.push((format!("{p}x_proj.weight"), vec![rk + 2 * n, di], rng.vec((rk + 2 * n) * di, 1.0 / (di as f32).sqrt())));
            tensors.push((format!("{p}dt_proj.weight"), vec![di, rk], rng.vec(di * rk, 1.0 / (rk as f32).sqrt())));
            // Δ between 1e-3 and 1e-1 (log-uniform), stored as its inverse softplus
            let fast = |c: usize| slow && c % 3 == 2;
            let dt_range = |c: usize| match decay {
                Decay::Init => (0.001f32, 0.1f32),
                Decay::Fast => (0.3, 3.0),
                Decay::Slow if fast(c) => (0.3, 3.0),
                Decay::Slow => (0.002, 0.01),
            };
            let dt_b = (0..di)
                .map(|c| {
                    let (lo, hi) = dt_range(c);
                    let dt = (lo.ln() + (rng.sym() + 1.0) * 0.5 * (hi / lo).ln()).exp();
                    dt + (-(-dt).exp_m1()).ln()
                })
                .collect();
            tensors.push((format!("{p}dt_proj.bias"), vec![di], dt_b));
            let a_scale = |c: usize| if slow && !fast(c) { 0.1f32.ln() } else { 0.0 };
            let a_log = (0..di * n).map(|e| (((e % n) + 1) as f32).ln() + a_scale(e / n) + 0.1 * rng.sym()).collect();
            tensors.push((format!("{p}A_log"), vec![di, n], a_log));
            tensors.push((format!("{p}D"), vec![di], (0..di).map(|_| 1.0 + 0.1 * rng.sym()).collect()));
        }
    }
    tensors.push(("backbone.norm_f.weight".into(), vec![d], (0..d).map(|_| 1.0 + 0.2 * rng.sym()).collect()));
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(name, shape, v)| (name, shape, bytemuck::cast_slice(&v).to_vec())).collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, b)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn random_model(kind: Kind, d: usize, n_layer: usize, tie: bool, seed: u64) -> Arc<Model> {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), kind, d, n_layer, tie, seed);
    Arc::new(Model::load(dir.path()).unwrap())
}

/// Token ids over the whole padded vocabulary (not only ACGTN), so every embedding row and
/// complement entry is exercised.
fn random_tokens(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    (0..len).map(|_| (rng.next() >> 33) as u8 % 16).collect()
}

fn hidden<B: Backend>(engine: &mut Engine<B>, tokens: &[u8]) -> Vec<f32> {
    engine.run(tokens).unwrap();
    let mut out = vec![f32::NAN; tokens.len() * engine.row_width()];
    engine.read_rows(0, &mut out).unwrap();
    out
}

/// Median wall time of 5 forward passes over `tokens`, after one warm-up pass (allocations,
/// module load, cuBLAS heuristics), each timed to a device synchronize.
fn median_secs(e: &mut Engine<Cuda>, tokens: &[u8]) -> f64 {
    e.run(tokens).unwrap();
    e.backend().synchronize().unwrap();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            e.run(tokens).unwrap();
            e.backend().synchronize().unwrap();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn assert_close(got: &[f32], want: &[f32], what: &str) -> f64 {
    assert_within(got, want, TOL, what)
}

fn assert_within(got: &[f32], want: &[f32], tol: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let err = rel_err(got, want);
    assert!(err <= tol, "{what}: relative error {err:.3e} > {tol:.0e}");
    err
}

fn gpu_engine(model: &Arc<Model>, chunk: usize, precision: Precision) -> Engine<Cuda> {
    Engine::new(Cuda::with_options(model.clone(), 0, chunk, precision).unwrap(), model.config.clone())
}

/// Shared in/out projections between the two directions of a bidirectional layer, or not
/// (both paths must match the CPU; the default shares contexts that fit its buffer cap).
const SHARES: [(bool, usize); 2] = [(true, usize::MAX), (false, 0)];

fn gpu_engine_shared(model: &Arc<Model>, chunk: usize, precision: Precision, share_bytes: usize) -> Engine<Cuda> {
    let backend = Cuda::with_options(model.clone(), 0, chunk, precision).unwrap().with_share_bytes(share_bytes);
    Engine::new(backend, model.config.clone())
}

fn gpu_engine_scan(model: &Arc<Model>, chunk: usize, precision: Precision, share_bytes: usize, scan: Scan) -> Engine<Cuda> {
    let backend = Cuda::with_options(model.clone(), 0, chunk, precision).unwrap().with_share_bytes(share_bytes).with_scan(scan);
    Engine::new(backend, model.config.clone())
}

fn slow_model(kind: Kind, d: usize, seed: u64) -> Arc<Model> {
    let dir = tempfile::tempdir().unwrap();
    write_model_full(dir.path(), kind, d, 2, true, seed, 16, 4, Decay::Slow);
    Arc::new(Model::load(dir.path()).unwrap())
}

fn compare_with_cpu(model: &Arc<Model>, lens: &[usize], chunks: &[usize], seed: u64, what: &str) {
    let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
    let mut worst = 0f64;
    for &chunk in chunks {
        for (share, bytes) in SHARES {
            let mut gpu = gpu_engine_shared(model, chunk, Precision::F32, bytes);
            for (i, &len) in lens.iter().enumerate() {
                let tokens = random_tokens(len, seed + i as u64);
                let want = hidden(&mut cpu, &tokens);
                let got = hidden(&mut gpu, &tokens);
                let e = assert_close(&got, &want, &format!("{what} len {len} chunk {chunk} shared {share}"));
                worst = worst.max(e);
            }
        }
    }
    println!("{what}: max relative error vs CPU {worst:.2e}");
}

#[test]
fn no_gpu_is_an_error_not_a_panic() {
    // On a machine without CUDA both calls must return (Err), never panic.
    match cuda::available() {
        Ok(n) => println!("{n} CUDA device(s)"),
        Err(e) => println!("no CUDA: {e}"),
    }
    if let Err(e) = Cuda::new(load("ph"), 0) {
        println!("Cuda::new: {e}");
    }
}

#[test]
fn small_models_match_cpu() {
    if !gpu("small_models_match_cpu") {
        return;
    }
    // d_model 20: d_inner 40 and dt_rank 2 fill no warp or vector evenly.
    let lens = [1, 2, 5, 33, 1000, 2500];
    for (kind, tie, seed) in [(Kind::Ph, true, 1), (Kind::Ps, true, 2), (Kind::Causal, true, 3), (Kind::Ph, false, 4), (Kind::Ps, false, 5)] {
        let model = random_model(kind, 20, 2, tie, seed);
        compare_with_cpu(&model, &lens, &[1, 3, 64, 1000, cuda::DEFAULT_CHUNK], seed * 100, &format!("{kind:?} tie {tie} d20"));
    }
    // d_state 10 (not a multiple of 4: scalar shared-memory reads) and d_conv 3
    let dir = tempfile::tempdir().unwrap();
    write_model_with(dir.path(), Kind::Ps, 20, 2, true, 6, 10, 3);
    let model = Arc::new(Model::load(dir.path()).unwrap());
    compare_with_cpu(&model, &lens, &[3, 1000, cuda::DEFAULT_CHUNK], 600, "Ps d20 d_state 10 d_conv 3");
}

#[test]
fn wide_models_match_cpu() {
    if !gpu("wide_models_match_cpu") {
        return;
    }
    // Long enough for several chunks and many scan segments per chunk.
    for (kind, seed) in [(Kind::Ph, 11), (Kind::Ps, 12), (Kind::Causal, 13)] {
        let model = random_model(kind, 128, 2, true, seed);
        compare_with_cpu(&model, &[20_001, 77], &[cuda::DEFAULT_CHUNK, 4099], seed * 100, &format!("{kind:?} d128"));
    }
}

#[test]
fn fixtures_match_reference() {
    if !gpu("fixtures_match_reference") {
        return;
    }
    for name in ["ph", "ps", "causal", "ph_bf16"] {
        let model = load(name);
        let mut worst = 0f64;
        for chunk in [cuda::DEFAULT_CHUNK, 7] {
            let mut gpu = Engine::new(Cuda::with_chunk(model.clone(), 0, chunk).unwrap(), model.config.clone());
            for (id, seq) in inputs() {
                let mut tokens = Vec::new();
                dna_mamba::tokenizer::encode_into(&seq, &mut tokens);
                let (_, want) = expected(name, &format!("hidden.{id}"));
                let got = hidden(&mut gpu, &tokens);
                worst = worst.max(assert_close(&got, &want, &format!("{name} hidden.{id} chunk {chunk}")));
            }
        }
        println!("{name}: max relative error vs float64 reference {worst:.2e}");
    }
}

#[test]
fn reruns_and_shorter_contexts_are_consistent() {
    if !gpu("reruns_and_shorter_contexts_are_consistent") {
        return;
    }
    // The engine reuses its streams for shorter contexts and the backend its scratch:
    // no state may leak from one run into the next.
    let model = random_model(Kind::Ps, 24, 2, true, 21);
    let mut gpu = Engine::new(Cuda::with_chunk(model.clone(), 0, 100).unwrap(), model.config.clone());
    let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
    for (i, len) in [500, 37, 500, 1].into_iter().enumerate() {
        let tokens = random_tokens(len, 300 + i as u64);
        assert_close(&hidden(&mut gpu, &tokens), &hidden(&mut cpu, &tokens), &format!("rerun {i} len {len}"));
    }
}

#[test]
fn bf16_matches_cpu() {
    if !gpu("bf16_matches_cpu") {
        return;
    }
    // bf16 projections against the CPU's f32: small odd shapes (no tensor-core-friendly
    // sizes), wide ones over several chunks, and every kind of model.
    let mut worst = 0f64;
    for (kind, d, layers, tie, seed) in [
        (Kind::Ph, 20, 2, true, 31),
        (Kind::Ps, 20, 2, false, 32),
        (Kind::Causal, 20, 2, true, 33),
        (Kind::Ph, 128, 2, true, 34),
        (Kind::Ps, 128, 2, true, 35),
        (Kind::Causal, 128, 2, true, 36),
    ] {
        let model = random_model(kind, d, layers, tie, seed);
        let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
        for (chunk, (share, bytes)) in [cuda::DEFAULT_CHUNK, 1000].into_iter().flat_map(|c| SHARES.map(|s| (c, s))) {
            let mut gpu = gpu_engine_shared(&model, chunk, Precision::Bf16, bytes);
            assert!(gpu.backend().name().contains("bf16"));
            // 140,001: three of bf16's default 65,536-row chunks where unshared
            for (i, len) in [1usize, 5, 151, 2500, 20_001, 140_001].into_iter().enumerate() {
                let tokens = random_tokens(len, seed * 10 + i as u64);
                let want = hidden(&mut cpu, &tokens);
                let got = hidden(&mut gpu, &tokens);
                let what = format!("bf16 {kind:?} d{d} tie {tie} len {len} chunk {chunk} shared {share}");
                let e = assert_within(&got, &want, TOL_BF16, &what);
                println!("{what}: relative error vs CPU f32 {e:.2e}");
                worst = worst.max(e);
            }
        }
    }
    println!("bf16 vs CPU f32, 2-layer models: max relative error {worst:.2e}");
}

#[test]
fn bf16_deep_model_matches_cpu() {
    if !gpu("bf16_deep_model_matches_cpu") {
        return;
    }
    // The caduceus-131k shape (d_model 256, 16 layers): bf16 rounding of the projections'
    // inputs accumulates over the layers. Also the fixtures against the float64 reference.
    for (kind, seed) in [(Kind::Ph, 41), (Kind::Ps, 42)] {
        let model = random_model(kind, 256, 16, true, seed);
        let tokens = random_tokens(4096, seed);
        let want = hidden(&mut Engine::new(Cpu::new(model.clone()), model.config.clone()), &tokens);
        let got = hidden(&mut gpu_engine(&model, cuda::DEFAULT_CHUNK, Precision::Bf16), &tokens);
        let e = assert_within(&got, &want, TOL_BF16_DEEP, &format!("bf16 {kind:?} d256 x16"));
        let f32_got = hidden(&mut gpu_engine(&model, cuda::DEFAULT_CHUNK, Precision::F32), &tokens);
        let e32 = assert_close(&f32_got, &want, &format!("f32 {kind:?} d256 x16"));
        println!("{kind:?} d256 x16, 4096 bases: relative error vs CPU f32: bf16 {e:.2e}, f32 {e32:.2e}");
    }
    for name in ["ph", "ps", "causal", "ph_bf16"] {
        let model = load(name);
        let mut gpu = gpu_engine(&model, cuda::DEFAULT_CHUNK, Precision::Bf16);
        let mut worst = 0f64;
        for (id, seq) in inputs() {
            let mut tokens = Vec::new();
            dna_mamba::tokenizer::encode_into(&seq, &mut tokens);
            let (_, want) = expected(name, &format!("hidden.{id}"));
            worst = worst.max(assert_within(&hidden(&mut gpu, &tokens), &want, TOL_BF16, &format!("bf16 {name} {id}")));
        }
        println!("bf16 {name}: max relative error vs float64 reference {worst:.2e}");
    }
}

/// Record lengths for the packing tests: single bases, 150 / 151 (reads), and mixes.
fn packing_cases() -> Vec<Vec<usize>> {
    let mut rng = Rng(77);
    let mixed: Vec<usize> = (0..60).map(|_| 1 + (rng.next() % 1500) as usize).collect();
    // boundaries everywhere: every offset within a scan segment (32 .. 124 steps) and at
    // segment starts
    let everywhere: Vec<usize> = (1..=70).chain([31, 32, 33, 32, 64, 62, 124, 1, 1, 2]).collect();
    vec![
        vec![1],
        vec![150],
        vec![1, 1, 1],
        vec![150, 151, 150],
        vec![151, 1, 150, 2, 3, 1000, 37, 1, 151],
        mixed,
        everywhere,
    ]
}

/// Packed records through the GPU against each record alone on the CPU, row for row.
fn check_packed(model: &Arc<Model>, chunks: &[usize], precision: Precision, tol: f64, seed: u64, what: &str) -> f64 {
    let hw = model.config.hidden_width();
    let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
    let mut worst = 0f64;
    for (chunk, (share, bytes)) in chunks.iter().flat_map(|&c| SHARES.map(|s| (c, s))) {
        let mut gpu = gpu_engine_shared(model, chunk, precision, bytes);
        let what = format!("{what} shared {share}");
        for (ci, lens) in packing_cases().into_iter().enumerate() {
            let recs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| random_tokens(l, seed + 1000 * ci as u64 + i as u64)).collect();
            let mut starts = Vec::new();
            let mut all = Vec::new();
            for r in &recs {
                starts.push(all.len());
                all.extend_from_slice(r);
            }
            gpu.run_packed(&all, &starts).unwrap();
            let mut got = vec![f32::NAN; all.len() * hw];
            gpu.read_rows(0, &mut got).unwrap();
            for (k, r) in recs.iter().enumerate() {
                let want = hidden(&mut cpu, r);
                let g = &got[starts[k] * hw..][..r.len() * hw];
                let e = assert_within(g, &want, tol, &format!("{what} chunk {chunk} case {ci} record {k} (len {})", r.len()));
                worst = worst.max(e);
            }
            // an unpacked run right after must not see the records
            let want = hidden(&mut cpu, &all);
            assert_within(&hidden(&mut gpu, &all), &want, tol, &format!("{what}: unpacked after packed"));
        }
    }
    println!("{what}: max relative error of packed records vs each alone on the CPU {worst:.2e}");
    worst
}

#[test]
fn packed_records_match_cpu_per_record() {
    if !gpu("packed_records_match_cpu_per_record") {
        return;
    }
    // chunk 64 and 1000 put record boundaries across chunks and inside scan segments
    for (kind, d, tie, seed) in [
        (Kind::Ph, 20, true, 51),
        (Kind::Ps, 20, false, 52),
        (Kind::Causal, 20, true, 53),
        (Kind::Ph, 128, true, 54),
        (Kind::Ps, 128, true, 55),
    ] {
        let model = random_model(kind, d, 2, tie, seed);
        // chunk 3: the conv window reaches across whole chunks (launch-bound, so d20 only)
        let chunks: &[usize] = if d == 20 { &[cuda::DEFAULT_CHUNK, 1000, 64, 3] } else { &[cuda::DEFAULT_CHUNK, 1000, 64] };
        check_packed(&model, chunks, Precision::F32, TOL, seed * 100, &format!("f32 {kind:?} d{d}"));
        check_packed(&model, &[cuda::DEFAULT_CHUNK, 64], Precision::Bf16, TOL_BF16, seed * 100, &format!("bf16 {kind:?} d{d}"));
    }
    let dir = tempfile::tempdir().unwrap();
    write_model_with(dir.path(), Kind::Ps, 20, 2, true, 56, 10, 3);
    let model = Arc::new(Model::load(dir.path()).unwrap());
    check_packed(&model, &[cuda::DEFAULT_CHUNK, 64], Precision::F32, TOL, 5600, "f32 Ps d20 d_state 10 d_conv 3");
    // slow decays: without the resets the state would reach across many records
    for (kind, seed) in [(Kind::Ph, 57), (Kind::Ps, 58), (Kind::Causal, 59)] {
        let model = slow_model(kind, 20, seed);
        check_packed(&model, &[cuda::DEFAULT_CHUNK, 1000], Precision::F32, TOL, seed * 100, &format!("slow f32 {kind:?} d20"));
        check_packed(&model, &[cuda::DEFAULT_CHUNK], Precision::Bf16, TOL_BF16, seed * 100, &format!("slow bf16 {kind:?} d20"));
    }
}

/// Both scan paths against the CPU on one model, the two-pass one with its specialised
/// output kernels (the default) and its generic one (`DNA_MAMBA_SCAN_SPEC=0`); returns the
/// worst error of each.
fn compare_scans(model: &Arc<Model>, lens: &[usize], chunks: &[usize], precision: Precision, tol: f64, seed: u64, what: &str) -> [f64; 3] {
    let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
    let mut worst = [0f64; 3];
    let wants: Vec<(Vec<u8>, Vec<f32>)> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let tokens = random_tokens(len, seed + i as u64);
            let want = hidden(&mut cpu, &tokens);
            (tokens, want)
        })
        .collect();
    for &chunk in chunks {
        for (share, bytes) in SHARES {
            for (k, (scan, spec)) in [(Scan::OnePass, true), (Scan::TwoPass, true), (Scan::TwoPass, false)].into_iter().enumerate() {
                let backend = Cuda::with_options(model.clone(), 0, chunk, precision).unwrap().with_share_bytes(bytes).with_scan(scan).with_spec(spec);
                let mut gpu = Engine::new(backend, model.config.clone());
                assert_eq!(gpu.backend().scan(), scan);
                for (tokens, want) in &wants {
                    let got = hidden(&mut gpu, tokens);
                    let e = assert_within(&got, want, tol, &format!("{what} {scan:?} spec {spec} len {} chunk {chunk} shared {share}", tokens.len()));
                    worst[k] = worst[k].max(e);
                }
            }
        }
    }
    println!("{what}: max relative error vs CPU f32: one-pass {:.2e}, two-pass specialised {:.2e}, two-pass generic {:.2e}", worst[0], worst[1], worst[2]);
    worst
}

#[test]
fn one_pass_scan_matches_cpu_with_slow_decays() {
    if !gpu("one_pass_scan_matches_cpu_with_slow_decays") {
        return;
    }
    // Slow decays carry the state across many segments (32 .. 124 steps) and chunks, so the
    // correction of every later segment runs, and stops at different steps per channel.
    // Lengths 1, 2, 3 (one segment), odd lengths, several chunks with carried state.
    let lens = [1usize, 2, 3, 63, 1001, 20_001, 70_001];
    for (kind, seed) in [(Kind::Ph, 101), (Kind::Ps, 102), (Kind::Causal, 103)] {
        let model = slow_model(kind, 20, seed);
        compare_scans(&model, &lens, &[cuda::DEFAULT_CHUNK, 4099, 1000], Precision::F32, TOL, seed * 10, &format!("slow f32 {kind:?} d20"));
        compare_scans(&model, &lens, &[cuda::DEFAULT_CHUNK, 1000], Precision::Bf16, TOL_BF16, seed * 10, &format!("slow bf16 {kind:?} d20"));
    }
    // d_model 128: several channel blocks per segment row
    for (kind, seed) in [(Kind::Ph, 104), (Kind::Ps, 105)] {
        let model = slow_model(kind, 128, seed);
        compare_scans(&model, &[20_001, 131_073], &[cuda::DEFAULT_CHUNK], Precision::F32, TOL, seed * 10, &format!("slow f32 {kind:?} d128"));
        compare_scans(&model, &[20_001], &[cuda::DEFAULT_CHUNK], Precision::Bf16, TOL_BF16, seed * 10, &format!("slow bf16 {kind:?} d128"));
    }
    // the initialisation's decays (most of the state outlives a segment too), and fast ones
    // (the correction stops after a few steps)
    let model = random_model(Kind::Ph, 64, 2, true, 106);
    compare_scans(&model, &[1, 777, 70_001], &[cuda::DEFAULT_CHUNK, 4099], Precision::F32, TOL, 1060, "init f32 Ph d64");
    let dir = tempfile::tempdir().unwrap();
    write_model_full(dir.path(), Kind::Ps, 20, 2, true, 108, 16, 4, Decay::Fast);
    let model = Arc::new(Model::load(dir.path()).unwrap());
    compare_scans(&model, &[1, 2, 1001, 20_001], &[cuda::DEFAULT_CHUNK, 1000], Precision::F32, TOL, 1080, "fast f32 Ps d20");
    compare_scans(&model, &[1, 2, 1001, 20_001], &[cuda::DEFAULT_CHUNK], Precision::Bf16, TOL_BF16, 1080, "fast bf16 Ps d20");
}

#[test]
fn one_pass_scan_small_shapes() {
    if !gpu("one_pass_scan_small_shapes") {
        return;
    }
    // Small enough for compute-sanitizer: chunk 100 (4 segments: scan_fused, scan_combine and
    // scan_fix all run), f32 and bf16, shared and unshared, one context and packed records.
    let model = slow_model(Kind::Ps, 24, 109);
    compare_scans(&model, &[500, 37, 1], &[100], Precision::F32, TOL, 1090, "small f32 Ps d24");
    compare_scans(&model, &[500, 37, 1], &[100], Precision::Bf16, TOL_BF16, 1090, "small bf16 Ps d24");
    let hw = model.config.hidden_width();
    let lens = [40usize, 1, 33, 100, 2, 64, 7];
    let recs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| random_tokens(l, 1095 + i as u64)).collect();
    let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
    for precision in [Precision::F32, Precision::Bf16] {
        let mut gpu = gpu_engine_scan(&model, 100, precision, usize::MAX, Scan::OnePass);
        let all: Vec<u8> = recs.concat();
        let starts: Vec<usize> = lens.iter().scan(0, |a, &l| { let s = *a; *a += l; Some(s) }).collect();
        gpu.run_packed(&all, &starts).unwrap();
        let mut got = vec![f32::NAN; all.len() * hw];
        gpu.read_rows(0, &mut got).unwrap();
        let tol = if precision == Precision::F32 { TOL } else { TOL_BF16 };
        for (k, r) in recs.iter().enumerate() {
            assert_within(&got[starts[k] * hw..][..r.len() * hw], &hidden(&mut cpu, r), tol, &format!("small packed {precision:?} record {k}"));
        }
    }
}

#[test]
fn one_pass_scan_matches_cpu_at_1m() {
    if !gpu("one_pass_scan_matches_cpu_at_1m") {
        return;
    }
    // 1,048,577 bases in one context: 33 chunks, the state carried across each, unshared
    // (over the cap) and shared (forced).
    let model = slow_model(Kind::Ph, 20, 107);
    compare_scans(&model, &[1_048_577], &[cuda::DEFAULT_CHUNK], Precision::F32, TOL, 1070, "slow f32 Ph d20 1M");
}

#[test]
fn pooled_packed_matches_mean_per_record() {
    if !gpu("pooled_packed_matches_mean_per_record") {
        return;
    }
    // Embedder::pooled_packed (GPU, records packed, sums on the device) against the CPU
    // Embedder with a Mean sink per record, for every strand option.
    let lens = [150usize, 151, 1, 150, 7, 2000, 150, 33];
    for (kind, seed) in [(Kind::Ph, 61), (Kind::Ps, 62), (Kind::Causal, 63)] {
        let model = random_model(kind, 24, 2, true, seed);
        let recs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| random_tokens(l, seed * 10 + i as u64).iter().map(|t| t % 12).collect()).collect();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        for strand in [Strand::Fwd, Strand::Rc, Strand::Both] {
            let mut cpu = Embedder::new(Cpu::new(model.clone()), model.clone(), strand, Feature::Hidden, 131_072, 0).unwrap();
            let gpu_backend = Cuda::with_options(model.clone(), 0, cuda::DEFAULT_CHUNK, Precision::F32).unwrap();
            let mut gpu = Embedder::new(gpu_backend, model.clone(), strand, Feature::Hidden, 131_072, 0).unwrap();
            // the CPU packs too, but its Embedder runs record by record here (`record`)
            assert!(gpu.can_pack());
            // pack limits that give one context, several, and one record each
            for pack in [1 << 20, 400, 1] {
                let sums = gpu.pooled_packed(&refs, pack).unwrap();
                for (k, r) in recs.iter().enumerate() {
                    let mut m = ReadPool::mean(r.len(), cpu.width());
                    cpu.record(r, &mut m, &mut |_| {}).unwrap();
                    let want: Vec<f32> = m.features();
                    let got: Vec<f32> = ReadPool::mean_of(&sums[k], r.len());
                    assert_close(&got, &want, &format!("{kind:?} {strand:?} pack {pack} record {k} (len {})", r.len()));
                }
            }
        }
    }
}

#[test]
fn queued_sums_survive_later_runs() {
    if !gpu("queued_sums_survive_later_runs") {
        return;
    }
    // What `embed`'s packed pipeline relies on: batches queued while earlier ones are still
    // in flight (each run overwrites the output the one before summed), waited for in the
    // CLI's order so that page-locked buffers are reused, and one waited for straight after
    // it was queued (the wait must block until the copy has landed), in bf16 and f32, against
    // each batch run and summed alone on the CPU. Batches differ in their records' lengths
    // and counts, and the first one is long enough to still be running when it is waited for.
    let model = random_model(Kind::Ph, 24, 2, true, 64);
    let batches: Vec<Vec<Vec<u8>>> = (0..4u64)
        .map(|b| {
            let (count, len) = if b == 0 { (64, 4000) } else { (30 + 7 * b as usize, 100 + 60 * b as usize) };
            (0..count as u64).map(|i| random_tokens(len + (i as usize * 37) % 200, 640 + b * 100 + i).iter().map(|t| t % 12).collect()).collect()
        })
        .collect();
    // (and the same calls with the copies synchronized, DNA_MAMBA_OVERLAP=0)
    for (precision, overlap) in [(Precision::F32, true), (Precision::Bf16, true), (Precision::Bf16, false)] {
        let mut cpu = Embedder::new(Cpu::new(model.clone()), model.clone(), Strand::Both, Feature::Hidden, 131_072, 0).unwrap();
        let backend = Cuda::with_options(model.clone(), 0, cuda::DEFAULT_CHUNK, precision).unwrap().with_overlap(overlap);
        let mut gpu = Embedder::new(backend, model.clone(), Strand::Both, Feature::Hidden, 131_072, 0).unwrap();
        assert_eq!(gpu.engine().backend().queues(), overlap);
        let start = |gpu: &mut Embedder<Cuda>, b: usize| {
            let refs: Vec<&[u8]> = batches[b].iter().map(|r| r.as_slice()).collect();
            gpu.pooled_packed_start(&refs, 1 << 20).unwrap()
        };
        let p0 = start(&mut gpu, 0);
        let mut got = vec![gpu.query_sums_finish(p0).unwrap()];
        let p1 = start(&mut gpu, 1);
        let p2 = start(&mut gpu, 2);
        got.push(gpu.query_sums_finish(p1).unwrap());
        let p3 = start(&mut gpu, 3);
        got.push(gpu.query_sums_finish(p2).unwrap());
        got.push(gpu.query_sums_finish(p3).unwrap());
        let tol = if precision == Precision::Bf16 { TOL_BF16 } else { 1e-6 };
        for (b, sums) in got.iter().enumerate() {
            let refs: Vec<&[u8]> = batches[b].iter().map(|r| r.as_slice()).collect();
            let want = cpu.pooled_packed(&refs, 1 << 20).unwrap();
            assert_eq!(sums.len(), want.len());
            for (k, (g, w)) in sums.iter().zip(&want).enumerate() {
                let g: Vec<f32> = g.iter().map(|&v| v as f32).collect();
                let w: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                assert_within(&g, &w, tol, &format!("{precision:?} overlap {overlap} batch {b} record {k}"));
            }
        }
    }
}

#[test]
fn causal_streaming_matches_cpu() {
    if !gpu("causal_streaming_matches_cpu") {
        return;
    }
    // mixer_carry: a causal record streamed segment by segment equals one context on the CPU.
    let model = random_model(Kind::Causal, 24, 2, true, 71);
    let tokens = random_tokens(5000, 72);
    let want = hidden(&mut Engine::new(Cpu::new(model.clone()), model.config.clone()), &tokens);
    let hw = model.config.hidden_width();
    for (chunk, seg) in [(cuda::DEFAULT_CHUNK, 1000usize), (64, 777), (3, 5000)] {
        let mut gpu = gpu_engine(&model, chunk, Precision::F32);
        let mut got = vec![f32::NAN; tokens.len() * hw];
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + seg).min(tokens.len());
            gpu.run_segment(&tokens[start..end], start == 0).unwrap();
            gpu.read_rows(0, &mut got[start * hw..end * hw]).unwrap();
            start = end;
        }
        assert_close(&got, &want, &format!("streamed causal, chunk {chunk}, segments of {seg}"));
    }
}

/// Throughput of a Ph model the size of caduceus-ph 131k (d_model 256, 16 layers) with
/// random weights: one forward pass over a single context, like `--strand fwd`.
#[test]
#[ignore]
fn bench_ph_131k() {
    if !gpu("bench_ph_131k") {
        return;
    }
    let model = random_model(Kind::Ph, 256, 16, true, 42);
    let probe = Cuda::new(model.clone(), 0).unwrap();
    let (free0, total) = probe.mem_get_info().unwrap();
    drop(probe);
    println!("device: {}", Cuda::new(model.clone(), 0).unwrap().name());
    println!("| precision | bases | chunk | shared in/out proj | median s | bases/s | GPU memory used (MiB, incl. context) |");
    for (precision, len, chunks) in [
        (Precision::F32, 131_072usize, &[16384usize, 32768, 65536][..]),
        (Precision::F32, 1_048_576, &[32768, 65536][..]),
        (Precision::Bf16, 131_072, &[32768, 65536][..]),
        (Precision::Bf16, 1_048_576, &[32768][..]),
    ] {
        let tokens = random_tokens(len, 7);
        for (chunk, (share, bytes)) in chunks.iter().flat_map(|&c| SHARES.map(|s| (c, s))) {
            if share && len > 131_072 {
                continue; // the default cap does not share this context; forcing it would not fit the budget
            }
            let mut e = gpu_engine_shared(&model, chunk, precision, if share { 1 << 30 } else { bytes });
            let med = median_secs(&mut e, &tokens);
            let (free, _) = e.backend().mem_get_info().unwrap();
            println!(
                "| {precision:?} | {len} | {chunk} | {share} | {med:.4} | {:.3e} | {} (baseline {}) |",
                len as f64 / med,
                (total - free) >> 20,
                (total - free0) >> 20
            );
        }
    }
}

/// The one-pass scan against the old two-pass one: forward passes of the Ph 131k shape
/// (random weights), `--strand fwd` contexts, f32 and bf16, default chunk and sharing.
/// Median of 5 after a warm-up; "MiB" is total - free after the runs.
#[test]
#[ignore]
fn bench_scan_paths() {
    if !gpu("bench_scan_paths") {
        return;
    }
    let init = random_model(Kind::Ph, 256, 16, true, 42);
    let dir = tempfile::tempdir().unwrap();
    write_model_full(dir.path(), Kind::Ph, 256, 16, true, 42, 16, 4, Decay::Fast);
    let fast = Arc::new(Model::load(dir.path()).unwrap());
    println!("device: {}", Cuda::new(init.clone(), 0).unwrap().name());
    println!("| decays | precision | bases | scan | median s | bases/s | GPU MiB used |");
    let cases = [
        (&init, "init", Precision::F32, 131_072usize),
        (&init, "init", Precision::Bf16, 131_072),
        (&init, "init", Precision::F32, 1_048_576),
        (&init, "init", Precision::Bf16, 1_048_576),
        (&fast, "fast", Precision::Bf16, 131_072),
        (&fast, "fast", Precision::Bf16, 1_048_576),
    ];
    for (model, name, precision, len) in cases {
        let tokens = random_tokens(len, 7);
        for scan in [Scan::TwoPass, Scan::OnePass] {
            let backend = Cuda::with_options(model.clone(), 0, cuda::DEFAULT_CHUNK, precision).unwrap().with_scan(scan);
            let mut e = Engine::new(backend, model.config.clone());
            let med = median_secs(&mut e, &tokens);
            let (free, total) = e.backend().mem_get_info().unwrap();
            println!("| {name} | {precision:?} | {len} | {scan:?} | {med:.4} | {:.3e} | {} |", len as f64 / med, (total - free) >> 20);
        }
    }
}

/// The bench model against the CPU engine at 131,072 bases (about a minute of CPU time on
/// 16 cores).
#[test]
#[ignore]
fn large_matches_cpu() {
    if !gpu("large_matches_cpu") {
        return;
    }
    let model = random_model(Kind::Ph, 256, 16, true, 42);
    let len = 131_072;
    let tokens = random_tokens(len, 8);
    let mut gpu = Engine::new(Cuda::new(model.clone(), 0).unwrap(), model.config.clone());
    let got = hidden(&mut gpu, &tokens);
    let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
    let t0 = Instant::now();
    let want = hidden(&mut cpu, &tokens);
    let cpu_s = t0.elapsed().as_secs_f64();
    let err = assert_close(&got, &want, "d256 x16 Ph, 131072 bases");
    println!(
        "d256 x16 Ph, {len} bases: relative error vs CPU {err:.2e}; CPU ({}) {cpu_s:.2} s = {:.3e} bases/s",
        cpu.backend().name(),
        len as f64 / cpu_s
    );
}

/// One forward pass of a one-layer d_model 256 Ph model over 131,072 bases: a short run to
/// profile per kernel (`ncu --metrics gpu__time_duration.sum ... -- --ignored profile`).
#[test]
#[ignore]
fn profile_one_layer() {
    if !gpu("profile_one_layer") {
        return;
    }
    // DNA_MAMBA_PROFILE_PRECISION=bf16 profiles the bf16 path
    let precision = match std::env::var("DNA_MAMBA_PROFILE_PRECISION").as_deref() {
        Ok("bf16") => Precision::Bf16,
        _ => Precision::F32,
    };
    // DNA_MAMBA_PROFILE_DECAY=fast: every channel's state forgets within a few steps
    let decay = if std::env::var("DNA_MAMBA_PROFILE_DECAY").as_deref() == Ok("fast") { Decay::Fast } else { Decay::Init };
    let dir = tempfile::tempdir().unwrap();
    write_model_full(dir.path(), Kind::Ph, 256, 1, true, 43, 16, 4, decay);
    let model = Arc::new(Model::load(dir.path()).unwrap());
    let mut e = gpu_engine(&model, cuda::DEFAULT_CHUNK, precision);
    e.run(&random_tokens(131_072, 9)).unwrap();
    e.backend().synchronize().unwrap();
}

#[test]
fn batched_variant_windows_match_cpu() {
    if !gpu("batched_variant_windows_match_cpu") {
        return;
    }
    // Scorer::masked_llr / embedding_distance with the windows packed into GPU contexts
    // (several limits) against the same batch on the CPU (one window per run there).
    use dna_mamba::variants::{Scorer, Window};
    for (kind, seed) in [(Kind::Ph, 81), (Kind::Ps, 82)] {
        let model = random_model(kind, 24, 2, true, seed);
        let windows: Vec<Window> = (0..40)
            .map(|i| {
                let len = [513usize, 257, 1, 100][i % 4];
                let tokens: Vec<u8> = random_tokens(len, seed * 100 + i as u64).iter().map(|t| 7 + t % 4).collect();
                let center = [256usize, 0, 0, 99][i % 4];
                let ref_col = (tokens[center] - 7) as usize;
                Window { tokens, center, ref_col, alt_cols: vec![(ref_col + 1) % 4, (ref_col + 2 + i % 2) % 4] }
            })
            .collect();
        let cpu_emb = Embedder::new(Cpu::new(model.clone()), model.clone(), Strand::Both, Feature::Logits, 4096, 0).unwrap();
        let mut cpu = Scorer::new(cpu_emb, 513, 128);
        let (want_m, want_e) = (cpu.masked_llr(&windows).unwrap(), cpu.embedding_distance(&windows).unwrap());
        for pack in [1 << 20, 1500, 1] {
            let backend = Cuda::with_options(model.clone(), 0, cuda::DEFAULT_CHUNK, Precision::F32).unwrap();
            let emb = Embedder::new(backend, model.clone(), Strand::Both, Feature::Logits, 4096, 0).unwrap();
            let mut gpu = Scorer::new(emb, 513, 128);
            gpu.pack_bases = pack;
            let (got_m, got_e) = (gpu.masked_llr(&windows).unwrap(), gpu.embedding_distance(&windows).unwrap());
            for k in 0..windows.len() {
                for j in 0..2 {
                    let what = format!("{kind:?} pack {pack} window {k} alt {j}");
                    assert!((got_m[k][j] - want_m[k][j]).abs() <= 1e-4 * (1.0 + want_m[k][j].abs()), "{what}: mllr {} vs {}", got_m[k][j], want_m[k][j]);
                    let ((gc, gl), (wc, wl)) = (got_e[k][j], want_e[k][j]);
                    assert!((gc - wc).abs() <= 1e-4 && (gl - wl).abs() <= 1e-3 * (1.0 + wl), "{what}: emb ({gc}, {gl}) vs ({wc}, {wl})");
                }
            }
        }
    }
}

#[test]
fn shared_and_unshared_contexts_alternate_on_one_backend() {
    if !gpu("shared_and_unshared_contexts_alternate_on_one_backend") {
        return;
    }
    // One backend whose cap shares contexts up to 5,000 rows (f32: 12·d_inner B per row):
    // short, long, short, ... reuse and free the shared buffers and the scratch in turn.
    for (kind, seed) in [(Kind::Ph, 91), (Kind::Ps, 92)] {
        let model = random_model(kind, 24, 2, true, seed);
        let cap = 5000 * 12 * model.config.d_inner();
        let mut gpu = gpu_engine_shared(&model, cuda::DEFAULT_CHUNK, Precision::F32, cap);
        let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
        for (i, len) in [1000usize, 20_001, 5000, 5001, 1000, 70_000, 7].into_iter().enumerate() {
            let tokens = random_tokens(len, seed * 10 + i as u64);
            assert_close(&hidden(&mut gpu, &tokens), &hidden(&mut cpu, &tokens), &format!("{kind:?} run {i} len {len}"));
        }
    }
}

#[test]
fn window_and_mean_sums_on_the_device_match_cpu() {
    if !gpu("window_and_mean_sums_on_the_device_match_cpu") {
        return;
    }
    // Sinks that take range sums (Mean, Windows): the GPU sums on the device per tile and
    // pass; the CPU reads the rows. Tiled records (context 1000, overlap 250), every strand,
    // overlapping windows (stride < window) and a partial last window.
    use dna_mamba::output::csv::Csv;
    use dna_mamba::pool::Windows;
    let values = |csv: Vec<u8>| -> Vec<f32> {
        String::from_utf8(csv).unwrap().lines().flat_map(|l| l.split(',').skip(3).map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>()).collect()
    };
    for (kind, seed) in [(Kind::Ph, 95), (Kind::Ps, 96)] {
        let model = random_model(kind, 24, 2, true, seed);
        let tokens = random_tokens(4321, seed);
        for strand in [Strand::Fwd, Strand::Rc, Strand::Both] {
            let mut cpu = Embedder::new(Cpu::new(model.clone()), model.clone(), strand, Feature::Hidden, 1000, 250).unwrap();
            let gpu_backend = Cuda::with_options(model.clone(), 0, cuda::DEFAULT_CHUNK, Precision::F32).unwrap();
            let mut gpu = Embedder::new(gpu_backend, model.clone(), strand, Feature::Hidden, 1000, 250).unwrap();
            let w = cpu.width();
            let (mut mc, mut mg) = (ReadPool::mean(tokens.len(), w), ReadPool::mean(tokens.len(), w));
            cpu.record(&tokens, &mut mc, &mut |_| {}).unwrap();
            gpu.record(&tokens, &mut mg, &mut |_| {}).unwrap();
            let (want, got): (Vec<f32>, Vec<f32>) = (mc.features(), mg.features());
            assert_close(&got, &want, &format!("{kind:?} {strand:?} mean"));
            for (window, stride) in [(500usize, 500usize), (300, 120), (1, 1)] {
                let (mut oc, mut og) = (Csv::new(Vec::new()), Csv::new(Vec::new()));
                cpu.record(&tokens, &mut Windows::new(&mut oc, "r", tokens.len(), window, stride, w, 0), &mut |_| {}).unwrap();
                gpu.record(&tokens, &mut Windows::new(&mut og, "r", tokens.len(), window, stride, w, 0), &mut |_| {}).unwrap();
                let (want, got) = (values(oc.into_inner().unwrap()), values(og.into_inner().unwrap()));
                assert!(!want.is_empty());
                assert_close(&got, &want, &format!("{kind:?} {strand:?} window {window} stride {stride}"));
            }
        }
    }
}

#[test]
fn batched_read_features_match_cpu() {
    if !gpu("batched_read_features_match_cpu") {
        return;
    }
    // classify/train read level: BackboneFeatures::read_batch on the GPU (records packed,
    // segment sums on the device) against `read` one record at a time on the CPU.
    use dna_mamba::heads::features::{BackboneFeatures, Featurizer};
    use dna_mamba::heads::Pooling;
    let lens = [1usize, 2, 5, 150, 7, 600, 151, 60, 60, 3];
    for (kind, seed) in [(Kind::Ph, 97), (Kind::Ps, 98)] {
        let model = random_model(kind, 24, 2, true, seed);
        let recs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &n)| random_tokens(n, seed * 10 + i as u64).iter().map(|t| 7 + t % 4).collect()).collect();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        for pooling in [Pooling::Mean, Pooling::Bins(6)] {
            let cpu_emb = Embedder::new(Cpu::new(model.clone()), model.clone(), Strand::Both, Feature::Hidden, 1000, 250).unwrap();
            let mut cpu = BackboneFeatures::new(cpu_emb, pooling);
            let backend = Cuda::with_options(model.clone(), 0, cuda::DEFAULT_CHUNK, Precision::F32).unwrap();
            let mut gpu = BackboneFeatures::new(Embedder::new(backend, model.clone(), Strand::Both, Feature::Hidden, 1000, 250).unwrap(), pooling);
            assert_eq!(gpu.batch_limit(), Some(1000));
            let mut got = Vec::new();
            gpu.read_batch(&refs, &mut got).unwrap();
            let mut want = Vec::new();
            let mut row = Vec::new();
            for r in &refs {
                cpu.read(r, &mut row, &mut |_| {}).unwrap();
                want.extend_from_slice(&row);
            }
            assert_close(&got, &want, &format!("{kind:?} {pooling:?} batched read features"));
        }
    }
}

/// Layer taps (`--layers`): the residual stream after each block equals the CPU's, for Ph, PS
/// and causal models, single and packed contexts, both precisions. (Written in the session that
/// added the taps, when no device time was left: first run pending.)
#[test]
fn layer_taps_match_cpu() {
    if !gpu("layer_taps_match_cpu") {
        return;
    }
    for (kind, seed) in [(Kind::Ph, 71), (Kind::Ps, 72), (Kind::Causal, 73)] {
        let model = random_model(kind, 24, 3, true, seed);
        let tokens = random_tokens(3001, seed);
        for layer in 0..=3 {
            let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
            cpu.set_layer(Some(layer)).unwrap();
            let want = hidden(&mut cpu, &tokens);
            for (precision, tol) in [(Precision::F32, TOL), (Precision::Bf16, 1e-2)] {
                let mut gpu = gpu_engine(&model, cuda::DEFAULT_CHUNK, precision);
                gpu.set_layer(Some(layer)).unwrap();
                assert_within(&hidden(&mut gpu, &tokens), &want, tol, &format!("{kind:?} layer {layer} {precision:?}"));
                // packed: every record's rows as if run alone
                let starts = [0usize, 1, 700, 2000];
                gpu.run_packed(&tokens, &starts).unwrap();
                let mut got = vec![0.0; tokens.len() * model.config.hidden_width()];
                gpu.read_rows(0, &mut got).unwrap();
                let ends = [1usize, 700, 2000, tokens.len()];
                for (&s, &e) in starts.iter().zip(&ends) {
                    let w = model.config.hidden_width();
                    let alone = hidden(&mut cpu, &tokens[s..e]);
                    assert_within(&got[s * w..e * w], &alone, tol, &format!("{kind:?} layer {layer} {precision:?} packed {s}..{e}"));
                }
            }
        }
        // several layers from one pass (copy_rows on the device) equal the CPU's, side by side
        let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
        cpu.set_layers(&[0, 2, 3]).unwrap();
        let want = hidden(&mut cpu, &tokens);
        for (precision, tol) in [(Precision::F32, TOL), (Precision::Bf16, 1e-2)] {
            let mut gpu = gpu_engine(&model, cuda::DEFAULT_CHUNK, precision);
            gpu.set_layers(&[0, 2, 3]).unwrap();
            assert_within(&hidden(&mut gpu, &tokens), &want, tol, &format!("{kind:?} layers 0,2,3 {precision:?}"));
        }
    }
}

/// Forward passes of the Ph 131k shape (random weights, initialisation decays), default
/// options: `DNA_MAMBA_BENCH_CASES` lists `precision:bases` pairs (default bf16 and f32 at
/// 131,072 and 1,048,576). Median of 5 after a warm-up. For sweeps of one setting
/// (`DNA_MAMBA_SEG_THREADS`, `DNA_MAMBA_SCAN`) in one device call.
#[test]
#[ignore]
fn bench_forward() {
    if !gpu("bench_forward") {
        return;
    }
    let cases = std::env::var("DNA_MAMBA_BENCH_CASES").unwrap_or_else(|_| "bf16:131072,bf16:1048576,f32:131072,f32:1048576".into());
    // DNA_MAMBA_BENCH_KIND=ps: the Caduceus-PS shape (d_model 256 x 16 layers, RC-equivariant)
    let ps = std::env::var("DNA_MAMBA_BENCH_KIND").is_ok_and(|k| k == "ps");
    let model = random_model(if ps { Kind::Ps } else { Kind::Ph }, 256, 16, true, 42);
    let label = format!(
        "{} seg_threads={} scan={}",
        if ps { "PS" } else { "Ph" },
        std::env::var("DNA_MAMBA_SEG_THREADS").unwrap_or_else(|_| "default".into()),
        std::env::var("DNA_MAMBA_SCAN").unwrap_or_else(|_| "default".into())
    );
    // DNA_MAMBA_BENCH_CHUNK: rows per chunk of the unshared path (and shared, when set)
    let chunk = std::env::var("DNA_MAMBA_BENCH_CHUNK").ok().map(|c| c.parse::<usize>().expect("chunk"));
    for case in cases.split(',') {
        // precision:bases, or precision:bases:pN for records of N bases packed into the context
        let mut f = case.split(':');
        let (p, len) = (f.next().expect("precision"), f.next().expect("bases"));
        let packed: Option<usize> = f.next().map(|r| r.trim_start_matches('p').parse().expect("pN"));
        let precision = if p == "bf16" { Precision::Bf16 } else { Precision::F32 };
        let len: usize = len.parse().unwrap();
        let tokens = random_tokens(len, 7);
        let mut e = gpu_engine(&model, chunk.unwrap_or(cuda::DEFAULT_CHUNK), precision);
        let med = match packed {
            None => median_secs(&mut e, &tokens),
            Some(r) => {
                let starts: Vec<usize> = (0..len).step_by(r).collect();
                e.run_packed(&tokens, &starts).unwrap();
                e.backend().synchronize().unwrap();
                let mut times: Vec<f64> = (0..5)
                    .map(|_| {
                        let t0 = Instant::now();
                        e.run_packed(&tokens, &starts).unwrap();
                        e.backend().synchronize().unwrap();
                        t0.elapsed().as_secs_f64()
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                times[2]
            }
        };
        let (free, total) = e.backend().mem_get_info().unwrap();
        let what = packed.map(|r| format!(" packed {r}")).unwrap_or_default();
        let ch = chunk.map(|c| format!(" chunk {c}")).unwrap_or_default();
        println!("| {label}{ch}{what} | {p} | {len} | {med:.4} | {:.3e} | {} |", len as f64 / med, (total - free) >> 20);
    }
}
