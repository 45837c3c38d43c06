//! The CUDA backend against the CPU backend (fresh random models and inputs) and against the
//! float64 reference fixtures. Tolerance: <= 1e-4 norm-wise relative error.
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
use dna_mamba::backend::cuda::{self, Cuda};
use dna_mamba::backend::Backend;
use dna_mamba::model::forward::Engine;
use dna_mamba::model::Model;
use safetensors::{tensor::TensorView, Dtype};

const TOL: f64 = 1e-4;

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
            let dt_b = (0..di)
                .map(|_| {
                    let dt = (0.001f32.ln() + (rng.sym() + 1.0) * 0.5 * (0.1f32 / 0.001).ln()).exp();
                    dt + (-(-dt).exp_m1()).ln()
                })
                .collect();
            tensors.push((format!("{p}dt_proj.bias"), vec![di], dt_b));
            let a_log = (0..di * n).map(|e| (((e % n) + 1) as f32).ln() + 0.1 * rng.sym()).collect();
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
    let mut out = vec![f32::NAN; tokens.len() * engine.config().hidden_width()];
    engine.read_rows(0, &mut out).unwrap();
    out
}

fn assert_close(got: &[f32], want: &[f32], what: &str) -> f64 {
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let err = rel_err(got, want);
    assert!(err <= TOL, "{what}: relative error {err:.3e}");
    err
}

fn compare_with_cpu(model: &Arc<Model>, lens: &[usize], chunks: &[usize], seed: u64, what: &str) {
    let mut cpu = Engine::new(Cpu::new(model.clone()), model.config.clone());
    let mut worst = 0f64;
    for &chunk in chunks {
        let mut gpu = Engine::new(Cuda::with_chunk(model.clone(), 0, chunk).unwrap(), model.config.clone());
        for (i, &len) in lens.iter().enumerate() {
            let tokens = random_tokens(len, seed + i as u64);
            let want = hidden(&mut cpu, &tokens);
            let got = hidden(&mut gpu, &tokens);
            let e = assert_close(&got, &want, &format!("{what} len {len} chunk {chunk}"));
            worst = worst.max(e);
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
    println!("| bases | chunk | median s | bases/s | GPU memory used (MiB, incl. context) |");
    for (len, chunks) in [(131_072usize, &[16384usize, 32768, 65536][..]), (1_048_576, &[32768, 65536][..])] {
        let tokens = random_tokens(len, 7);
        for &chunk in chunks {
            let mut e = Engine::new(Cuda::with_chunk(model.clone(), 0, chunk).unwrap(), model.config.clone());
            e.run(&tokens).unwrap(); // warm-up: allocations, module load, cuBLAS heuristics
            e.backend().synchronize().unwrap();
            let mut times = Vec::new();
            for _ in 0..5 {
                let t0 = Instant::now();
                e.run(&tokens).unwrap();
                e.backend().synchronize().unwrap();
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let med = times[times.len() / 2];
            let (free, _) = e.backend().mem_get_info().unwrap();
            println!(
                "| {len} | {chunk} | {med:.4} | {:.3e} | {} (baseline {}) |",
                len as f64 / med,
                (total - free) >> 20,
                (total - free0) >> 20
            );
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
    let model = random_model(Kind::Ph, 256, 1, true, 43);
    let mut e = Engine::new(Cuda::new(model.clone(), 0).unwrap(), model.config.clone());
    e.run(&random_tokens(131_072, 9)).unwrap();
    e.backend().synchronize().unwrap();
}
