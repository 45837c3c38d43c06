//! The model loader refuses what it cannot compute exactly, naming the tensor.

mod common;

use std::collections::HashMap;

use common::fixtures;
use dna_mamba::model::Model;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Copy fixture `name` into a temp folder with its tensors edited by `edit`.
fn edited(name: &str, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) -> tempfile::TempDir {
    let src = fixtures().join(name);
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut t: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut t);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let views: Vec<(String, TensorView)> =
        t.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

fn err(dir: &tempfile::TempDir) -> String {
    Model::load(dir.path()).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn round_trip_loads() {
    let d = edited("ps", |_| {});
    let m = Model::load(d.path()).unwrap();
    assert_eq!(m.weights.layers.len(), 3);
}

#[test]
fn missing_unknown_and_wrong_dtype_tensors_are_named() {
    let name = "caduceus.backbone.layers.1.mixer.mamba_fwd.x_proj.weight";
    let d = edited("ph", |t| {
        t.remove(name);
    });
    let e = err(&d);
    assert!(e.contains("missing tensor") && e.contains(name) && e.contains("[34, 48]"), "{e}");

    let d = edited("ph", |t| {
        t.insert("caduceus.backbone.layers.0.mixer.mamba_fwd.extra".into(), (Dtype::F32, vec![1], vec![0; 4]));
    });
    let e = err(&d);
    assert!(e.contains("matches no known") && e.contains("mamba_fwd.extra"), "{e}");

    let d = edited("ph", |t| {
        let v = t.get_mut("caduceus.backbone.norm_f.weight").unwrap();
        v.0 = Dtype::I32;
    });
    let e = err(&d);
    assert!(e.contains("norm_f.weight") && e.contains("I32"), "{e}");

    let d = edited("ph", |t| {
        let v = t.get_mut("caduceus.backbone.norm_f.weight").unwrap();
        v.2[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(err(&d).contains("not finite"));
}

#[test]
fn untied_copies_and_heads_are_accepted() {
    // a tool that wrote the tied tensors out anyway, and an LM head stored untied
    let d = edited("ph", |t| {
        let w = t["caduceus.backbone.layers.0.mixer.mamba_fwd.in_proj.weight"].clone();
        t.insert("caduceus.backbone.layers.0.mixer.mamba_rev.in_proj.weight".into(), w);
        let e = t["caduceus.backbone.embeddings.word_embeddings.weight"].clone();
        t.insert("lm_head.weight".into(), e);
    });
    let m = Model::load(d.path()).unwrap();
    assert!(m.weights.lm_head.is_some());
}
