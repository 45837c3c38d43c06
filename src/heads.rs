//! Task heads: small classifiers on frozen backbone features (or k-mer frequencies), the file
//! they live in, and what is needed to fit and run them.
//!
//! A head file is one safetensors file: the weights as f32 tensors, and under the metadata
//! key `dna_mamba_head` a JSON document (`Meta`): task, label names, level (one label per read,
//! or one per base), the features it reads (source, strand, pooling) and the fingerprint of
//! the backbone it was fitted on. A head is refused on any other backbone.
//!
//! Tensors: `mu`, `sd` (standardization of the features, `[D]`), then either `w` `[C, D]` and
//! `b` `[C]` (linear softmax) or `w1` `[H, D]`, `b1` `[H]`, `w2` `[C, H]`, `b2` `[C]` (one ReLU
//! hidden layer). Probabilities are `softmax(net((x - mu) / sd))`.
//!
//! Submodules: `net` (the network and its forward pass), `fingerprint` (which backbone a head
//! belongs to), `fit` (optimisers), `metrics` (held-out scores), `kmer` (the baseline
//! features), `features` (one trait over both sources; the pooling itself is `crate::pool`),
//! `labels` (label tables, BED/GFF intervals).

pub mod features;
mod fingerprint;
pub mod fit;
pub mod kmer;
pub mod labels;
pub mod metrics;
mod net;

pub use fingerprint::fingerprint;
pub use net::{dot, softmax, Net};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::embed::Strand;
use crate::model::Model;

/// Metadata key of the JSON document inside the safetensors file.
pub const META_KEY: &str = "dna_mamba_head";
pub const FORMAT: &str = "dna-mamba-head";
pub const VERSION: u32 = 1;

/// One label per read/record, or one per base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Read,
    Position,
}

/// Where feature vectors come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Final hidden states of the backbone.
    Backbone,
    /// Canonical k-mer frequencies (the baseline; needs no model).
    Kmer,
}

/// How positions become one feature vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Read level: the mean over all positions.
    Mean,
    /// Read level: means over `n` equal segments, concatenated (keeps coarse position).
    Bins(usize),
    /// Position level: the mean over a centred window of `w` bases (odd; 1 = the position alone),
    /// clipped at the record's ends.
    Window(usize),
}

impl Pooling {
    pub fn level(self) -> Level {
        match self {
            Pooling::Mean | Pooling::Bins(_) => Level::Read,
            Pooling::Window(_) => Level::Position,
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pooling::Mean => write!(f, "mean"),
            Pooling::Bins(n) => write!(f, "bins:{n}"),
            Pooling::Window(w) => write!(f, "window:{w}"),
        }
    }
}

impl FromStr for Pooling {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let num = |v: &str| -> Result<usize> {
            v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| anyhow!("pooling {s}: expected a positive number after ':'"))
        };
        match s.split_once(':') {
            None if s == "mean" => Ok(Pooling::Mean),
            None if s == "none" => Ok(Pooling::Window(1)),
            Some(("bins", n)) => Ok(Pooling::Bins(num(n)?)),
            Some(("window", w)) => {
                let w = num(w)?;
                if w % 2 == 0 {
                    bail!("pooling {s}: the window must be odd (centred on the base)");
                }
                Ok(Pooling::Window(w))
            }
            _ => bail!("pooling {s}: expected mean, bins:N, none or window:W"),
        }
    }
}

impl Serialize for Pooling {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Pooling {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub fn strand_name(s: Strand) -> &'static str {
    match s {
        Strand::Fwd => "fwd",
        Strand::Rc => "rc",
        Strand::Both => "both",
    }
}

pub fn parse_strand(s: &str) -> Result<Strand> {
    match s {
        "fwd" => Ok(Strand::Fwd),
        "rc" => Ok(Strand::Rc),
        "both" => Ok(Strand::Both),
        _ => bail!("strand {s}: expected fwd, rc or both"),
    }
}

/// What a head reads: enough to recompute its features from a sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Features {
    pub source: Source,
    /// fwd | rc | both (backbone features only).
    pub strand: String,
    pub pooling: Pooling,
    /// k-mer sizes: of k-mer features, or of the k-mer frequencies appended to backbone
    /// features (`train --with-kmers`; empty: backbone features alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub k: Vec<usize>,
    /// Backbone layers the features are read from, side by side (`embed --layers`); empty
    /// (heads written before layers existed too): the final normalized output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<usize>,
    /// Width of one feature vector.
    pub dim: usize,
}

/// The backbone a head was fitted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backbone {
    /// `fingerprint(model)`: a hash of the architecture and every weight as f32.
    pub fingerprint: String,
    pub d_model: usize,
    pub n_layer: usize,
    pub rcps: bool,
    /// Where it was loaded from when the head was fitted (informational).
    #[serde(default)]
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Linear softmax (multinomial logistic regression).
    Linear,
    /// One ReLU hidden layer, then softmax.
    Mlp,
}

/// The JSON document of a head file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub task: String,
    pub labels: Vec<String>,
    pub level: Level,
    /// Position level: the label of bases outside every interval (BED output can omit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    pub features: Features,
    /// Absent for k-mer heads, which need no model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<Backbone>,
    /// Bases per model context used for the features (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<usize>,
    /// Read level: below this top probability `classify` calls a record `unassigned`; chosen
    /// on the held-out split so that the calls above it reach `train --call-precision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_threshold: Option<f32>,
    /// Held-out metrics and how the head was trained (informational).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub training: serde_json::Value,
}

/// A head ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub meta: Meta,
    pub mu: Vec<f32>,
    pub sd: Vec<f32>,
    pub net: Net,
}

/// Scratch space for `Head::predict`.
#[derive(Default)]
pub struct Scratch {
    z: Vec<f32>,
    h: Vec<f32>,
}

impl Head {
    pub fn n_labels(&self) -> usize {
        self.meta.labels.len()
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Class probabilities of one raw feature vector.
    pub fn predict(&self, x: &[f32], s: &mut Scratch, probs: &mut [f32]) {
        debug_assert_eq!(x.len(), self.dim());
        s.z.clear();
        s.z.extend(x.iter().zip(&self.mu).zip(&self.sd).map(|((x, m), d)| (x - m) / d));
        self.net.logits(&s.z, &mut s.h, probs);
        softmax(probs);
    }

    /// Check shapes and the document against each other.
    pub fn validate(&self) -> Result<()> {
        let m = &self.meta;
        if m.format != FORMAT {
            bail!("not a dna-mamba head (format {:?})", m.format);
        }
        if m.version != VERSION {
            bail!("head format version {} is not supported (this build reads version {VERSION})", m.version);
        }
        let (c, d) = (m.labels.len(), m.features.dim);
        if c < 2 {
            bail!("a head needs at least two labels");
        }
        if m.features.pooling.level() != m.level {
            bail!("pooling {} does not fit level {}", m.features.pooling, crate::cli::flag_value(&m.level));
        }
        if self.mu.len() != d || self.sd.len() != d {
            bail!("mu/sd have {} and {} values, features have {d}", self.mu.len(), self.sd.len());
        }
        if self.sd.iter().any(|v| v.is_nan() || *v <= 0.0) {
            bail!("sd must be positive");
        }
        let ok = match &self.net {
            Net::Linear { w, b } => w.len() == c * d && b.len() == c,
            Net::Mlp { w1, b1, w2, b2 } => {
                let h = b1.len();
                h > 0 && w1.len() == h * d && w2.len() == c * h && b2.len() == c && m.hidden == Some(h)
            }
        };
        if !ok || m.kind != self.net.kind() {
            bail!("weights do not match {} labels x {d} features ({})", c, crate::cli::flag_value(&m.kind));
        }
        let all = [&self.mu, &self.sd];
        if all.iter().any(|v| v.iter().any(|x| !x.is_finite())) || !self.tensors().iter().all(|(_, _, v)| v.iter().all(|x| x.is_finite())) {
            bail!("non-finite weights");
        }
        if let Some(bg) = m.background.as_ref().filter(|bg| !m.labels.contains(bg)) {
            bail!("background label {bg:?} is not one of the labels");
        }
        Ok(())
    }

    fn tensors(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        let (c, d) = (self.n_labels(), self.dim());
        let mut t = vec![("mu", vec![d], &self.mu[..]), ("sd", vec![d], &self.sd[..])];
        match &self.net {
            Net::Linear { w, b } => {
                t.push(("w", vec![c, d], &w[..]));
                t.push(("b", vec![c], &b[..]));
            }
            Net::Mlp { w1, b1, w2, b2 } => {
                let h = b1.len();
                t.push(("w1", vec![h, d], &w1[..]));
                t.push(("b1", vec![h], &b1[..]));
                t.push(("w2", vec![c, h], &w2[..]));
                t.push(("b2", vec![c], &b2[..]));
            }
        }
        t
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let tensors = self.tensors();
        let views = tensors
            .iter()
            .map(|(name, shape, v)| {
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytemuck::cast_slice(v))?;
                Ok((name.to_string(), view))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string_pretty(&self.meta)?)]);
        Ok(safetensors::serialize(views, Some(meta))?)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("not a safetensors file: {e}"))?;
        let doc = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| anyhow!("a safetensors file but not a dna-mamba head (no `{META_KEY}` metadata; is it a model?)"))?;
        let meta: Meta = serde_json::from_str(doc).context("head metadata")?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| anyhow!("not a safetensors file: {e}"))?;
        let get = |name: &str| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| anyhow!("missing tensor {name}"))?;
            if t.dtype() != safetensors::Dtype::F32 {
                bail!("tensor {name}: dtype {:?}, expected F32", t.dtype());
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
        };
        let net = match meta.kind {
            Kind::Linear => Net::Linear { w: get("w")?, b: get("b")? },
            Kind::Mlp => Net::Mlp { w1: get("w1")?, b1: get("b1")?, w2: get("w2")?, b2: get("b2")? },
        };
        let head = Head { mu: get("mu")?, sd: get("sd")?, net, meta };
        head.validate()?;
        Ok(head)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("head {}", path.display()))?;
        Head::from_bytes(&bytes).with_context(|| format!("head {}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let mut f = crate::output::AtomicFile::create(path)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.commit()
    }

    /// Refuse to run on a backbone other than the one the head was fitted on.
    pub fn check_backbone(&self, model: Option<(&Model, &str)>) -> Result<()> {
        let Some(want) = &self.meta.backbone else {
            return Ok(());
        };
        let Some((model, fp)) = model else {
            bail!("head '{}' reads backbone features: give the model it was fitted on with --model", self.meta.task);
        };
        if want.fingerprint != fp {
            bail!(
                "head '{}' was fitted on another backbone (fingerprint {}, d_model {}, {} layers, from {}); \
                 the model {} has fingerprint {fp} (d_model {}, {} layers): give its backbone with --model, \
                 or refit the head on this model with `dna-mamba train`",
                self.meta.task,
                want.fingerprint,
                want.d_model,
                want.n_layer,
                if want.source.is_empty() { "?" } else { &want.source },
                model.source.display(),
                model.config.d_model,
                model.config.n_layer
            );
        }
        Ok(())
    }

    /// The strand a backbone head reads.
    pub fn strand(&self) -> Result<Strand> {
        parse_strand(&self.meta.features.strand)
    }
}

/// Heads built into the binary (models/heads/, each with its card there), fitted on the
/// built-in default model.
pub const BUILTIN: &[(&str, &[u8])] = &[
    ("origin", include_bytes!("../models/heads/origin.safetensors")),
    ("coding", include_bytes!("../models/heads/coding.safetensors")),
];

/// `--head X`: a head file; else the named head `X` from the folder `$DNA_MAMBA_HEADS`
/// (`X.safetensors`) when that is set, or from the heads built into the binary.
pub fn find(name: &str) -> Result<Head> {
    let p = Path::new(name);
    if p.is_file() {
        return Head::load(p);
    }
    if name.contains('/') || name.ends_with(".safetensors") {
        bail!("head {name}: no such file");
    }
    match std::env::var_os("DNA_MAMBA_HEADS") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let file = dir.join(format!("{name}.safetensors"));
            if file.is_file() {
                return Head::load(&file);
            }
            let mut known: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".safetensors")).map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            known.sort();
            if known.is_empty() {
                bail!("head {name}: no such file, and no named heads in $DNA_MAMBA_HEADS ({})", dir.display());
            }
            bail!("head {name}: no such file or named head (in $DNA_MAMBA_HEADS, {}: {})", dir.display(), known.join(", "));
        }
        None => match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((_, bytes)) => Head::from_bytes(bytes).with_context(|| format!("built-in head {name}")),
            None => {
                let known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                bail!("head {name}: no such file or built-in head (built in: {})", known.join(", "))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: Kind, hidden: Option<usize>) -> Meta {
        Meta {
            format: FORMAT.into(),
            version: VERSION,
            task: "t".into(),
            labels: vec!["a".into(), "b".into(), "c".into()],
            level: Level::Read,
            background: None,
            kind,
            hidden,
            features: Features { source: Source::Kmer, strand: "both".into(), pooling: Pooling::Mean, k: vec![1], layers: Vec::new(), dim: 2 },
            backbone: None,
            context: None,
            call_threshold: None,
            training: serde_json::Value::Null,
        }
    }

    #[test]
    fn round_trip_and_forward() {
        let head = Head {
            meta: meta(Kind::Linear, None),
            mu: vec![1.0, 0.0],
            sd: vec![2.0, 1.0],
            net: Net::Linear { w: vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0], b: vec![0.0, 0.0, 0.5] },
        };
        let back = Head::from_bytes(&head.to_bytes().unwrap()).unwrap();
        assert_eq!(back, head);
        let mut p = [0.0; 3];
        head.predict(&[3.0, 1.0], &mut Scratch::default(), &mut p);
        // z = (1, 1): logits (1, 1, 0.5)
        let e = [1f32.exp(), 1f32.exp(), 0.5f32.exp()];
        let s: f32 = e.iter().sum();
        for i in 0..3 {
            assert!((p[i] - e[i] / s).abs() < 1e-6);
        }
        let mlp = Head {
            meta: meta(Kind::Mlp, Some(1)),
            mu: vec![0.0, 0.0],
            sd: vec![1.0, 1.0],
            net: Net::Mlp { w1: vec![1.0, -1.0], b1: vec![0.0], w2: vec![1.0, 0.0, -1.0], b2: vec![0.0; 3] },
        };
        assert_eq!(Head::from_bytes(&mlp.to_bytes().unwrap()).unwrap(), mlp);
        // relu(2 - 3) = 0: equal logits
        mlp.predict(&[2.0, 3.0], &mut Scratch::default(), &mut p);
        assert!(p.iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn bad_files_are_refused() {
        let mut head = Head {
            meta: meta(Kind::Linear, None),
            mu: vec![0.0, 0.0],
            sd: vec![1.0, 1.0],
            net: Net::Linear { w: vec![0.0; 5], b: vec![0.0; 3] },
        };
        assert!(head.to_bytes().is_err());
        head.net = Net::Linear { w: vec![0.0; 6], b: vec![0.0; 3] };
        head.sd[0] = 0.0;
        assert!(head.validate().is_err());
        assert!(Head::from_bytes(b"not safetensors").is_err());
        let plain = safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView)>::new(), None).unwrap();
        let e = Head::from_bytes(&plain).unwrap_err().to_string();
        assert!(e.contains("not a dna-mamba head"), "{e}");
    }

    #[test]
    fn builtin_heads_load() {
        for (name, bytes) in BUILTIN {
            let h = Head::from_bytes(bytes).unwrap();
            assert_eq!(h.meta.task, *name);
            assert!(h.meta.backbone.is_some(), "{name}: fitted on the default backbone");
        }
        assert_eq!(find("origin").unwrap().meta.level, Level::Read);
        assert_eq!(find("coding").unwrap().meta.level, Level::Position);
        assert!(find("nope").unwrap_err().to_string().contains("built in: origin, coding"));
    }

    #[test]
    fn pooling_text() {
        for s in ["mean", "bins:3", "window:1", "window:101"] {
            assert_eq!(s.parse::<Pooling>().unwrap().to_string(), s);
        }
        assert_eq!("none".parse::<Pooling>().unwrap(), Pooling::Window(1));
        assert!("window:4".parse::<Pooling>().is_err());
        assert!("bins:0".parse::<Pooling>().is_err());
        assert!("max".parse::<Pooling>().is_err());
    }
}
