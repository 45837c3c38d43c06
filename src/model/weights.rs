//! Load and validate a checkpoint in the released Caduceus layout (model-format.md §1.4), from
//! whichever files hold it (`tensors`: safetensors or PyTorch, single or sharded).
//!
//! Tensors are looked up by name (file order is by dtype), widened to f32, and checked for
//! shape before anything is computed. Tied tensors are absent from released files: the
//! reverse Mamba's in/out projections share the forward ones (`Arc`), and the LM head is the
//! embedding unless an untied head is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};

use super::tensors::{self, Tensors};

use super::config::Config;
use crate::error::ModelError;

/// One Mamba-1 mixer (one direction). Row-major, shapes as in the file.
#[derive(Clone, Debug)]
pub struct Mamba {
    /// [2·d_inner, d_model]; shared with the other direction when weights are tied.
    pub in_proj: Arc<[f32]>,
    /// [d_inner, d_conv] (the file's [d_inner, 1, d_conv]).
    pub conv_w: Vec<f32>,
    /// The same transposed to [d_conv, d_inner], the layout the CPU conv reads.
    pub conv_w_t: Vec<f32>,
    pub conv_b: Vec<f32>,
    /// [dt_rank + 2·d_state, d_inner]
    pub x_proj: Vec<f32>,
    /// [d_inner, dt_rank]
    pub dt_w: Vec<f32>,
    pub dt_b: Vec<f32>,
    /// A = -exp(A_log), [d_inner, d_state], computed once in f32 as the reference does.
    pub a: Vec<f32>,
    pub d: Vec<f32>,
    /// [d_model, d_inner]
    pub out_proj: Arc<[f32]>,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub norm: Vec<f32>,
    pub fwd: Mamba,
    /// Present for bidirectional models.
    pub rev: Option<Mamba>,
}

#[derive(Clone, Debug)]
pub struct Weights {
    /// [vocab_padded, d_model]
    pub embedding: Vec<f32>,
    pub layers: Vec<Layer>,
    pub norm_f: Vec<f32>,
    /// An untied LM head stored in the file, [vocab_padded, d_model]; else the embedding is used.
    pub lm_head: Option<Vec<f32>>,
    /// token id -> complement id, vocab_padded entries.
    pub complement: Vec<usize>,
    /// Unique parameters (tied tensors counted once).
    pub n_params: usize,
}

/// Default complement map of the Caduceus tokenizer: A<->T (7<->10), C<->G (8<->9), rest fixed.
pub fn default_complement(n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| match i {
            7 => 10,
            8 => 9,
            9 => 8,
            10 => 7,
            i => i,
        })
        .collect()
}

struct Reader<'a> {
    st: Tensors<'a>,
    prefix: &'static str,
    /// Names not yet consumed; whatever is left at the end matches no known tensor.
    left: BTreeSet<String>,
    n_params: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let full = format!("{}{name}", self.prefix);
        self.take_full(&full, shape)
    }

    fn take_full(&mut self, full: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let t = self.st.get(full).ok_or_else(|| ModelError::MissingTensor {
            name: full.to_string(),
            expected: shape.to_vec(),
        })?;
        self.left.remove(full);
        if t.shape != shape {
            return Err(ModelError::Shape {
                name: full.to_string(),
                expected: shape.to_vec(),
                found: t.shape.to_vec(),
            });
        }
        let v = to_f32(full, t.dtype, t.data)?;
        self.n_params += v.len();
        Ok(v)
    }

    fn take_optional(&mut self, full: &str, shape: &[usize]) -> Result<Option<Vec<f32>>, ModelError> {
        if self.left.contains(full) { self.take_full(full, shape).map(Some) } else { Ok(None) }
    }

    /// An I64 complement map buffer, if stored.
    fn complement(&mut self, full: &str, n: usize) -> Result<Option<Vec<usize>>, ModelError> {
        if !self.left.contains(full) {
            return Ok(None);
        }
        self.left.remove(full);
        let t = self.st.get(full).expect("listed name");
        if t.dtype != Dtype::I64 {
            return Err(ModelError::Dtype {
                name: full.into(),
                expected: "I64",
                found: format!("{:?}", t.dtype),
            });
        }
        if t.shape != [n] {
            return Err(ModelError::Shape { name: full.into(), expected: vec![n], found: t.shape.to_vec() });
        }
        let map: Vec<usize> = t
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .map(|v| usize::try_from(v).ok().filter(|&v| v < n).unwrap_or(usize::MAX))
            .collect();
        if map.contains(&usize::MAX) {
            return Err(ModelError::Value { name: full.into(), msg: format!("entries must lie in 0..{n}") });
        }
        Ok(Some(map))
    }
}

fn to_f32(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, ModelError> {
    let v: Vec<f32> = match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(ModelError::Dtype {
                name: name.into(),
                expected: "F32, F16 or BF16",
                found: format!("{other:?}"),
            })
        }
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ModelError::Value { name: name.into(), msg: format!("element {i} is not finite") });
    }
    Ok(v)
}

/// Compare the sizes config.json states with the tensor shapes of the file's header, before
/// anything is allocated from them: a config claiming 10^9 layers or a 10^12-row vocabulary
/// is refused here, by name, instead of by the allocator. (Every other tensor's shape is
/// checked as it is read, also before its data is copied.)
fn check_sizes(cfg: &Config, st: &Tensors, prefix: &str, emb_name: &str, path: &Path) -> Result<(), ModelError> {
    let config = path.with_file_name("config.json");
    let mismatch = |msg: String| ModelError::Config(format!("{}: {msg}", config.display()));
    let file = path.display();
    let (d, v) = (cfg.d_model, cfg.vocab_padded());
    let emb = format!("{prefix}{emb_name}");
    if let Some(t) = st.get(&emb) {
        if let [rows, cols] = *t.shape {
            let mut fields = Vec::new();
            if cols != d {
                fields.push(format!("d_model {d}"));
            }
            if rows != v {
                fields.push(format!(
                    "vocab_size {} (padded to a multiple of {}: {v})",
                    cfg.vocab_size, cfg.pad_vocab_size_multiple
                ));
            }
            if !fields.is_empty() {
                return Err(mismatch(format!(
                    "{} does not match {file}: tensor {emb}: expected shape [{v}, {d}], found [{rows}, {cols}]",
                    fields.join(" and ")
                )));
            }
        }
    }
    let layer_prefix = format!("{prefix}layers.");
    let last = st
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix(&layer_prefix)?.split('.').next()?.parse::<usize>().ok())
        .max();
    if last.map_or(0, |l| l + 1) != cfg.n_layer {
        let held = match last {
            Some(l) => format!("layers 0 to {l}"),
            None => "no layers".into(),
        };
        return Err(mismatch(format!("n_layer is {}, but {file} holds {held}", cfg.n_layer)));
    }
    let (di, n, k, rk) = (cfg.d_inner(), cfg.d_state, cfg.d_conv, cfg.dt_rank());
    let mixer = if cfg.rcps { "mixer.submodule." } else { "mixer." };
    let layer0 = format!("{layer_prefix}0.{mixer}mamba_fwd.");
    for (tensor, want, fields) in [
        ("in_proj.weight", vec![2 * di, d], "ssm_cfg.expand"),
        ("conv1d.weight", vec![di, 1, k], "ssm_cfg.d_conv"),
        ("A_log", vec![di, n], "ssm_cfg.d_state"),
        ("x_proj.weight", vec![rk + 2 * n, di], "ssm_cfg.dt_rank"),
    ] {
        let name = format!("{layer0}{tensor}");
        if let Some(t) = st.get(&name) {
            if t.shape != want.as_slice() {
                return Err(mismatch(format!(
                    "{fields} does not match {file} (with d_model {d}, expand {}, d_state {n}, d_conv {k}, dt_rank {rk}): tensor {name}: expected shape {want:?}, found {:?}",
                    cfg.expand,
                    t.shape
                )));
            }
        }
    }
    Ok(())
}

impl Weights {
    /// Read a model folder's weights, whichever files hold them (see `tensors::find`).
    pub fn from_dir(cfg: &Config, dir: &Path) -> Result<Self, ModelError> {
        let layout = tensors::find(dir)?;
        let maps = tensors::map(&layout)?;
        let first = match &layout {
            tensors::Layout::Safetensors(p) | tensors::Layout::Torch(p) => p[0].clone(),
        };
        Self::from_tensors(cfg, tensors::open(&layout, &maps)?, &first)
    }

    /// Parse safetensors bytes (the embedded default model).
    pub fn from_bytes(cfg: &Config, bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        Self::from_tensors(cfg, Tensors::safetensors(bytes, path)?, path)
    }

    /// `path` names the (first) weights file in messages.
    fn from_tensors(cfg: &Config, st: Tensors, path: &Path) -> Result<Self, ModelError> {
        let names: BTreeSet<String> = st.names().into_iter().map(String::from).collect();
        if let Some(n) = names.iter().find(|n| n.ends_with(".dt_bias") || (n.contains(".mixer.") && n.ends_with("norm.weight"))) {
            return Err(ModelError::Config(format!(
                "{}: tensor {n} belongs to a Mamba-2 mixer (dt_bias and a norm inside the mixer, no x_proj); Mamba-2 checkpoints (PlantCAD2, ...) are not supported yet, only Mamba-1 (Caduceus, PlantCaduceus)",
                path.display()
            )));
        }
        // Saved from `CaduceusForMaskedLM` the keys start with `caduceus.`; from the base class not.
        let prefix = if names.iter().any(|n| n.starts_with("caduceus.backbone.")) {
            "caduceus.backbone."
        } else {
            "backbone."
        };
        let mut r = Reader { st, prefix, left: names, n_params: 0 };
        let (d, v) = (cfg.d_model, cfg.vocab_padded());
        let (di, n, k, rk) = (cfg.d_inner(), cfg.d_state, cfg.d_conv, cfg.dt_rank());

        let emb_name = if cfg.rcps {
            "embeddings.word_embeddings.embedding.weight"
        } else {
            "embeddings.word_embeddings.weight"
        };
        check_sizes(cfg, &r.st, prefix, emb_name, path)?;
        let embedding = r.take(emb_name, &[v, d])?;
        let buf_map = r.complement(&format!("{prefix}embeddings.word_embeddings.complement_map"), v)?;
        let head_map = r.complement("lm_head.complement_map", v)?;
        if let (Some(a), Some(b)) = (&buf_map, &head_map) {
            if a != b {
                return Err(ModelError::Value {
                    name: "lm_head.complement_map".into(),
                    msg: "differs from the embedding's complement_map".into(),
                });
            }
        }
        // The stored buffers are what the reference computes with (§5); then config; then default.
        let complement = match buf_map.or(head_map) {
            Some(m) => m,
            None => match &cfg.complement_map {
                Some(m) => {
                    let mut full = default_complement(v);
                    full[..m.len().min(v)].copy_from_slice(&m[..m.len().min(v)]);
                    full
                }
                None => default_complement(v),
            },
        };
        if complement.iter().any(|&c| c >= v) {
            return Err(ModelError::Config(format!("complement_map entries must lie in 0..{v}")));
        }

        let mixer = if cfg.rcps { "mixer.submodule." } else { "mixer." };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let norm = r.take(&format!("layers.{i}.norm.weight"), &[d])?;
            let mut load = |dir: &str, shared: Option<&Mamba>| -> Result<Mamba, ModelError> {
                let p = format!("layers.{i}.{mixer}{dir}.");
                let (in_proj, out_proj) = match shared {
                    Some(m) => {
                        // Tied: absent from released safetensors; a saved module (.bin) stores
                        // them as the forward ones' storage, which they must then equal.
                        let pre = r.prefix;
                        for (t, fwd) in [("in_proj.weight", &m.in_proj), ("out_proj.weight", &m.out_proj)] {
                            let full = format!("{pre}{p}{t}");
                            if r.left.remove(&full) {
                                let v = r.st.get(&full).expect("listed name");
                                let same = v.shape.iter().product::<usize>() == fwd.len()
                                    && to_f32(&full, v.dtype, v.data).is_ok_and(|x| x[..] == fwd[..]);
                                if !same {
                                    return Err(ModelError::Value {
                                        name: full,
                                        msg: "differs from the forward mixer's, but config.json ties them (bidirectional_weight_tie)".into(),
                                    });
                                }
                            }
                        }
                        (m.in_proj.clone(), m.out_proj.clone())
                    }
                    None => (
                        Arc::from(r.take(&format!("{p}in_proj.weight"), &[2 * di, d])?),
                        Arc::from(r.take(&format!("{p}out_proj.weight"), &[d, di])?),
                    ),
                };
                let a_log = r.take(&format!("{p}A_log"), &[di, n])?;
                let conv_w = r.take(&format!("{p}conv1d.weight"), &[di, 1, k])?;
                let conv_w_t = (0..k * di).map(|i| conv_w[(i % di) * k + i / di]).collect();
                Ok(Mamba {
                    in_proj,
                    conv_w,
                    conv_w_t,
                    conv_b: r.take(&format!("{p}conv1d.bias"), &[di])?,
                    x_proj: r.take(&format!("{p}x_proj.weight"), &[rk + 2 * n, di])?,
                    dt_w: r.take(&format!("{p}dt_proj.weight"), &[di, rk])?,
                    dt_b: r.take(&format!("{p}dt_proj.bias"), &[di])?,
                    a: a_log.iter().map(|&x| -x.exp()).collect(),
                    d: r.take(&format!("{p}D"), &[di])?,
                    out_proj,
                })
            };
            let fwd = load("mamba_fwd", None)?;
            let rev = if cfg.bidirectional {
                Some(load("mamba_rev", if cfg.weight_tie { Some(&fwd) } else { None })?)
            } else {
                None
            };
            layers.push(Layer { norm, fwd, rev });
        }
        let norm_f = r.take("norm_f.weight", &[d])?;
        let head_name = if cfg.rcps { "lm_head.lm_head.weight" } else { "lm_head.weight" };
        let lm_head = r.take_optional(head_name, &[v, d])?;
        if let Some(name) = r.left.iter().next() {
            return Err(ModelError::UnknownTensor { name: name.clone() });
        }
        Ok(Weights { embedding, layers, norm_f, lm_head, complement, n_params: r.n_params })
    }

    /// The matrix the masked-LM head multiplies by: tied embedding unless stored untied.
    pub fn head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embedding)
    }
}

/// Tensor names grouped for error messages and `info` (unused names are reported by the loader).
pub fn dtype_summary(bytes: &[u8]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Ok(st) = SafeTensors::deserialize(bytes) {
        for (_, t) in st.tensors() {
            *out.entry(format!("{:?}", t.dtype())).or_insert(0) += 1;
        }
    }
    out
}
