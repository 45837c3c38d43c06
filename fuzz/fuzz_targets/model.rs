//! config.json and model.safetensors bytes: the loader must refuse, never panic.
//! Input: config text, a 0 byte, then the safetensors bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cfg, st) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(cfg) = std::str::from_utf8(cfg) else { return };
    if let Ok(model) = dna_mamba::model::Model::from_bytes(cfg, st, "fuzz") {
        // a model that loads must also run: one short context through the CPU backend
        let c = &model.config;
        if c.d_model * c.n_layer * c.d_inner() < 1 << 16 {
            let model = std::sync::Arc::new(model);
            let cfg = model.config.clone();
            let cpu = dna_mamba::backend::cpu::Cpu::new(model);
            let mut e = dna_mamba::model::forward::Engine::new(cpu, cfg);
            let _ = e.run(&[7, 8, 9, 10, 11, 6]);
        }
    }
});
