//! Any bytes as a pytorch_model.bin: the restricted reader refuses or returns tensors, never
//! panics, and every tensor it returns holds exactly its shape's worth of bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = dna_mamba::model::torch::read_bytes(data) {
        for (name, t) in tensors {
            let n: usize = t.shape.iter().product();
            let es = match t.dtype {
                safetensors::Dtype::F32 => 4,
                safetensors::Dtype::F16 | safetensors::Dtype::BF16 => 2,
                _ => 8,
            };
            assert_eq!(t.data.len(), n * es, "{name}");
        }
    }
});
