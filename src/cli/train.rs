//! `dna-mamba train`: fit a head on frozen backbone features (or k-mer frequencies, the
//! baseline), score it on held-out data, and write it.
//!
//! Read level: labelled records (an id,label table or `label=` in headers); held out: `--test`
//! files or a stratified fraction of records. Position level: a genome plus BED/GFF3 intervals;
//! the genome is cut into stretches that are run through the model one by one, so a held-out
//! stretch never overlaps, nor sees, training sequence; positions are subsampled to bound
//! memory. Data and labels are checked before any model work.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::{for_each_record, load_model, select_backend, with_backend, Common, Totals, Tiles};
use crate::backend::Backend;
use crate::batch::{self, Policy};
use crate::embed::{ascending_layers, Embedder, Feature, Strand};
use crate::heads::features::{check_feature_size, describe_features, BackboneFeatures, Featurizer, KmerFeatures, WithKmers};
use crate::heads::fit::{self, FitOptions, MlpOptions, Rng};
use crate::heads::labels::{self, header_label, Interval, LabelTable};
use crate::heads::metrics::{self, argmax, Scores};
use crate::heads::{self, Head, Kind, Level, Meta, Pooling, Scratch, Source};
use crate::output::csv::Csv;
use crate::output::Output;
use crate::model::Model;
use crate::progress::Progress;
use crate::model::vocab::Vocab;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Labelled records (read level) or the genome (position level): FASTA/FASTQ, plain or
    /// compressed; `-` is stdin.
    #[arg(required_unless_present = "load_features")]
    pub inputs: Vec<String>,
    #[command(flatten)]
    pub common: Common,
    /// One label per record (`read`) or one per base (`position`).
    #[arg(long, value_enum)]
    pub level: Level,
    /// Where to write the head (a .safetensors file; written only on success).
    #[arg(short = 'o', long = "out", value_name = "HEAD")]
    pub out: PathBuf,
    /// Task name stored in the head (and used in column names) [default: the output file's stem].
    #[arg(long)]
    pub task: Option<String>,

    /// Read level: a CSV/TSV of `id,label` rows [default: a `label=NAME` field in each header].
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Position level: labelled intervals as BED (label = the name column, or --label).
    #[arg(long, value_name = "FILE", conflicts_with = "gff")]
    pub bed: Option<PathBuf>,
    /// Position level: labelled intervals as GFF3 (label = the feature type, or --label).
    #[arg(long, value_name = "FILE")]
    pub gff: Option<PathBuf>,
    /// Position level, GFF3: the feature types to use (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "CDS")]
    pub types: Vec<String>,
    /// Position level: give every interval this label instead of its name or type.
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Position level: the label of bases outside every interval.
    #[arg(long, default_value = "other", value_name = "NAME")]
    pub background: String,

    /// Held-out data, labelled like the inputs: records (read level) or genome sequences
    /// (position level, labelled from the same BED/GFF). Without it a part of the inputs is held out.
    #[arg(long, value_name = "FILE")]
    pub test: Vec<String>,
    /// Without --test: the fraction held out, of records (stratified by label) or of genome
    /// stretches. Also the held-out share of --max-bases.
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub test_fraction: f64,
    /// Position level: hold out these whole sequences (comma-separated ids) instead of a
    /// random fraction of stretches.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub test_chroms: Vec<String>,
    /// Position level: bases per genome stretch. Train and test stretches never overlap and
    /// each is run through the model on its own.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub stretch: usize,
    /// Position level: at most this many genome bases are run through the model (stretches
    /// sampled at random, train and test together).
    #[arg(long, default_value_t = 2_000_000, value_name = "N")]
    pub max_bases: usize,
    /// Position level: at most this many positions (sampled at random) in each of the
    /// training and the held-out set.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_positions: usize,

    /// Feature source: the backbone's hidden states, or canonical k-mer frequencies (the
    /// baseline; needs no model).
    #[arg(long, value_enum, default_value = "backbone")]
    pub features: Source,
    /// k-mer sizes for --features kmer and --with-kmers (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "4,5,6")]
    pub k: Vec<usize>,
    /// Backbone features followed by the canonical k-mer frequencies of --k, pooled alike
    /// (position level: over the same window, which must hold the longest k-mer).
    #[arg(long)]
    pub with_kmers: bool,
    /// Backbone features from these layers instead of the final normalized output, side by
    /// side (see `embed --layers`; one pass, ascending order); recorded in the head, which
    /// `classify` then reads the same way.
    #[arg(long, value_name = "L", value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// Which strand's view of the backbone (see `embed --strand`).
    #[arg(long, value_enum, default_value = "both")]
    pub strand: Strand,
    /// Pooling: `mean` or `bins:N` (read level: means over N equal segments, concatenated);
    /// `none` or `window:W` (position level: mean over a centred window of odd W bases)
    /// [default: mean / none; window:101 for k-mer features and --with-kmers at position level].
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,

    /// Read level: the precision the calls must reach on the held-out split; the lowest top
    /// probability that gets there is stored in the head, and `classify` calls records below
    /// it `unassigned` (0: no threshold, every record gets its most probable label).
    #[arg(long, value_name = "P", default_value_t = 0.9)]
    pub call_precision: f64,

    /// Head: linear softmax, or one ReLU hidden layer.
    #[arg(long, value_enum, default_value = "linear")]
    pub kind: Kind,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// L2 penalty of the linear head [default: chosen on an inner validation split].
    #[arg(long)]
    pub l2: Option<f64>,
    /// Weight classes equally in the loss (for unbalanced labels).
    #[arg(long)]
    pub balanced: bool,
    /// Seed for splits, sampling and initialisation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the held-out predictions as CSV.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
    /// Also save the feature matrices and labels of both splits (safetensors), to fit other
    /// heads on them with --load-features.
    #[arg(long, value_name = "FILE")]
    pub save_features: Option<PathBuf>,
    /// Fit on features saved by --save-features instead of computing them (no inputs, labels
    /// or model needed; the head records the backbone they came from).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["labels", "bed", "gff", "test", "save_features"])]
    pub load_features: Option<PathBuf>,

    #[command(flatten)]
    pub tiles: Tiles,
}

/// One labelled record (read level).
struct Rec {
    id: String,
    tokens: Vec<u8>,
    label: String,
}

/// A genome stretch and the positions sampled in it (position level).
struct Stretch {
    chrom: usize,
    start: usize,
    end: usize,
    /// Sampled positions, relative to `start`, ascending.
    at: Vec<usize>,
}

/// The labelled data of one split, before features.
enum Split {
    Reads(Vec<Rec>),
    Genome(Vec<Stretch>),
}

impl Split {
    fn rows(&self) -> usize {
        match self {
            Split::Reads(r) => r.len(),
            Split::Genome(s) => s.iter().map(|s| s.at.len()).sum(),
        }
    }
    fn bases(&self) -> usize {
        match self {
            Split::Reads(r) => r.iter().map(|r| r.tokens.len()).sum(),
            Split::Genome(s) => s.iter().map(|s| s.end - s.start).sum(),
        }
    }
}

/// Sequences of the genome(s) with per-base label indices.
struct Genome {
    ids: Vec<String>,
    tokens: Vec<Vec<u8>>,
    labels: Vec<Vec<u8>>,
}

struct Data {
    label_names: Vec<String>,
    train: Split,
    test: Split,
    genome: Option<Genome>,
    /// Free-form description for the head's card.
    about: serde_json::Value,
}

/// Features and label indices of one split.
#[derive(Default)]
struct Matrix {
    x: Vec<f32>,
    y: Vec<u32>,
    /// Row names for --predictions: (id, position or None).
    names: Vec<(String, Option<usize>)>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let pooling = match (&a.pool, a.level, a.features) {
        (Some(p), _, _) => p.parse::<Pooling>()?,
        (None, Level::Read, _) => Pooling::Mean,
        (None, Level::Position, Source::Backbone) if a.with_kmers => Pooling::Window(101),
        (None, Level::Position, Source::Backbone) => Pooling::Window(1),
        (None, Level::Position, Source::Kmer) => Pooling::Window(101),
    };
    if a.with_kmers {
        crate::heads::features::check_with_kmers(&a.k, pooling)?;
    }
    if !(0.0..=1.0).contains(&a.call_precision) {
        bail!("--call-precision {}: expected a share from 0 to 1", a.call_precision);
    }
    if pooling.level() != a.level {
        bail!("--pool {pooling} is for {} level; at {} level use {}", level_name(pooling.level()), level_name(a.level), match a.level {
            Level::Read => "mean or bins:N",
            Level::Position => "none or window:W",
        });
    }
    if !(a.test_fraction > 0.0 && a.test_fraction < 1.0) {
        bail!("--test-fraction must lie between 0 and 1");
    }
    if a.kind == Kind::Mlp && a.hidden == 0 {
        bail!("--hidden must be at least 1");
    }
    let task = match &a.task {
        Some(t) => t.clone(),
        None => {
            let stem = a.out.file_name().and_then(|s| s.to_str()).unwrap_or("head");
            stem.strip_suffix(".safetensors").unwrap_or(stem).to_string()
        }
    };
    if task.is_empty() || task.contains(',') {
        bail!("--task {task:?}: a task name must be non-empty and without commas");
    }
    let started = Instant::now();
    let prep = match &a.load_features {
        Some(p) => load_features(p, &a)?,
        None => compute(&a, pooling)?,
    };
    if let Some(p) = &a.save_features {
        save_features(p, &prep)?;
    }
    let Prepared { label_names, about, train, test, features, backbone, context, backend } = prep;
    let feat_secs = started.elapsed().as_secs_f64();

    if a.level == Level::Read && a.call_precision > 0.0 && label_names.iter().any(|l| l == "unassigned") {
        bail!("a label is named `unassigned`, which classify writes below the call threshold: rename it, or train with --call-precision 0");
    }
    // fit
    let c = label_names.len();
    let d = features.dim;
    let opts = FitOptions {
        kind: a.kind,
        l2: a.l2,
        balanced: a.balanced,
        mlp: MlpOptions { hidden: a.hidden, seed: a.seed, ..Default::default() },
        seed: a.seed,
    };
    let fitted = fit::fit(&train.x, d, &train.y, c, &opts)?;
    let meta = Meta {
        format: heads::FORMAT.into(),
        version: heads::VERSION,
        task: task.clone(),
        labels: label_names.clone(),
        level: a.level,
        background: (a.level == Level::Position && label_names.contains(&a.background)).then(|| a.background.clone()),
        kind: a.kind,
        hidden: (a.kind == Kind::Mlp).then_some(a.hidden),
        features,
        backbone,
        context,
        call_threshold: None,
        training: serde_json::Value::Null,
    };
    let mut head = Head { meta, mu: fitted.mu, sd: fitted.sd, net: fitted.net };
    let train_probs = predict_all(&head, &train.x);
    let test_probs = predict_all(&head, &test.x);
    let s_train = metrics::score(&train_probs, &train.y, c);
    let s_test = metrics::score(&test_probs, &test.y, c);
    // read level: the threshold under which classify says `unassigned`, on the held-out split
    let call = (a.level == Level::Read && a.call_precision > 0.0).then(|| metrics::call_threshold(&test_probs, &test.y, c, a.call_precision));
    if let Some(t) = call {
        // above every probability when no threshold gets there
        head.meta.call_threshold = Some(t.map_or(2.0, |(t, _, _)| t));
        if t.is_none() && !a.common.quiet {
            eprintln!("warning: no threshold gives held-out calls {:.0}% precise: classify will call every record unassigned (train with --call-precision 0 for plain argmax calls)", a.call_precision * 100.0);
        }
    }
    let fit_secs = started.elapsed().as_secs_f64() - feat_secs;
    head.meta.training = json!({
        "data": about,
        "rows": {"train": train.y.len(), "test": test.y.len()},
        "fit": fitted.info,
        "seed": a.seed,
        "metrics": {"train": s_train, "test": s_test},
        "calls": call.map(|t| json!({
            "target_precision": a.call_precision,
            "threshold": t.map(|t| t.0),
            "held_out_precision": t.map(|t| t.1),
            "held_out_called": t.map(|t| t.2),
        })),
        "producer": format!("dna-mamba {}", env!("CARGO_PKG_VERSION")),
    });
    if let Some(p) = &a.predictions {
        write_predictions(p, &a.inputs, &head, &test, &test_probs)?;
    }
    head.save(&a.out)?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "split\tn\taccuracy\tmacro_f1\tmcc\tauroc")?;
    for (name, s) in [("train", &s_train), ("test", &s_test)] {
        let auc = s.auroc.map(|v| format!("{v:.4}")).unwrap_or_else(|| "NA".into());
        writeln!(out, "{name}\t{}\t{:.4}\t{:.4}\t{:.4}\t{auc}", s.n, s.accuracy, s.macro_f1, s.mcc)?;
    }
    out.flush()?;
    if !a.common.quiet {
        if let Some(Some((t, p, called))) = call {
            eprintln!("calls: below a top probability of {t:.4} classify says `unassigned`; above it {:.1}% of held-out records are called, {:.1}% of them right", called * 100.0, p * 100.0);
        }
        eprintln!("held-out confusion (rows: true label, columns: predicted):");
        eprintln!("{}", confusion_text(&label_names, &s_test));
        eprintln!(
            "dna-mamba: wrote {} ({} head, {} labels, {} features); features {:.1} s on {}, fit {:.1} s",
            a.out.display(),
            match a.kind {
                Kind::Linear => "linear".to_string(),
                Kind::Mlp => format!("MLP {}", a.hidden),
            },
            c,
            d,
            feat_secs,
            backend,
            fit_secs
        );
    }
    Ok(())
}

/// Labelled features of both splits and where they came from.
struct Prepared {
    label_names: Vec<String>,
    about: serde_json::Value,
    train: Matrix,
    test: Matrix,
    features: heads::Features,
    backbone: Option<heads::Backbone>,
    context: Option<usize>,
    backend: String,
}

/// Read the data and labels, then compute the features (on the backbone or as k-mers).
fn compute(a: &TrainArgs, pooling: Pooling) -> Result<Prepared> {
    let vocab = data_vocab(a)?;
    let data = match a.level {
        Level::Read => read_data(a, &vocab)?,
        Level::Position => genome_data(a, &vocab)?,
    };
    if !a.common.quiet {
        eprintln!(
            "train: {} labels ({}); {} training rows ({} bases), {} held out ({} bases)",
            data.label_names.len(),
            data.label_names.join(", "),
            data.train.rows(),
            data.train.bases(),
            data.test.rows(),
            data.test.bases()
        );
    }
    let (train, test, features, backbone, context, backend) = match a.features {
        Source::Kmer => {
            if !a.layers.is_empty() {
                bail!("--layers selects backbone layers; k-mer features (--features kmer) have none");
            }
            if a.with_kmers {
                bail!("--with-kmers appends k-mer frequencies to backbone features; --features kmer has them already");
            }
            let mut km = KmerFeatures::new(&a.k, pooling)?;
            check_feature_size(data.train.rows() + data.test.rows(), km.dim(), pooling)?;
            let (tr, te) = featurize(a, &data, &mut km)?;
            let dim = km.dim();
            (tr, te, describe_features(Source::Kmer, "both", pooling, &a.k, &[], dim), None, None, km.describe())
        }
        Source::Backbone => {
            let model = load_model(&a.common)?;
            let (tr, te, dim, context, backend) =
                with_backend!(select_backend(&a.common, &model, a.tiles.chunk)?, b => backbone_features(b, a, &data, model.clone(), pooling))?;
            let bb = heads::Backbone {
                fingerprint: heads::fingerprint(&model),
                d_model: model.config.d_model,
                n_layer: model.config.n_layer,
                rcps: model.config.rcps,
                source: model.source.display().to_string(),
            };
            let k: &[usize] = if a.with_kmers { &a.k } else { &[] };
            let f = describe_features(Source::Backbone, heads::strand_name(a.strand), pooling, k, &ascending_layers(&a.layers), dim);
            (tr, te, f, Some(bb), Some(context), backend)
        }
    };
    Ok(Prepared { label_names: data.label_names, about: data.about, train, test, features, backbone, context, backend })
}

const FEATURES_KEY: &str = "dna_mamba_features";

fn save_features(path: &Path, p: &Prepared) -> Result<()> {
    use safetensors::tensor::TensorView;
    let d = p.features.dim;
    let ys: Vec<Vec<u8>> = [&p.train.y, &p.test.y].iter().map(|y| y.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = vec![
        ("x_train".to_string(), TensorView::new(safetensors::Dtype::F32, vec![p.train.y.len(), d], bytemuck::cast_slice(&p.train.x))?),
        ("y_train".to_string(), TensorView::new(safetensors::Dtype::U32, vec![p.train.y.len()], &ys[0])?),
        ("x_test".to_string(), TensorView::new(safetensors::Dtype::F32, vec![p.test.y.len(), d], bytemuck::cast_slice(&p.test.x))?),
        ("y_test".to_string(), TensorView::new(safetensors::Dtype::U32, vec![p.test.y.len()], &ys[1])?),
    ];
    let doc = json!({"labels": p.label_names, "features": p.features, "backbone": p.backbone, "context": p.context, "data": p.about});
    let meta = HashMap::from([(FEATURES_KEY.to_string(), doc.to_string())]);
    let bytes = safetensors::serialize(views, Some(meta))?;
    let mut f = crate::output::AtomicFile::create(path)?;
    f.write_all(&bytes)?;
    f.commit()
}

fn load_features(path: &Path, a: &TrainArgs) -> Result<Prepared> {
    // the file is read whole: every size below is checked against it before more is allocated
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let name = path.display();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{name}: not a safetensors file: {e}"))?;
    let doc: serde_json::Value = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(FEATURES_KEY))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| anyhow!("{name}: the {FEATURES_KEY} metadata is not JSON: {e}"))?
        .ok_or_else(|| anyhow!("{name}: not a feature file of `train --save-features`"))?;
    let field = |k: &str| doc.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let features: heads::Features = serde_json::from_value(field("features")).map_err(|e| anyhow!("{name}: metadata field features: {e}"))?;
    let label_names: Vec<String> = serde_json::from_value(field("labels")).map_err(|e| anyhow!("{name}: metadata field labels: {e}"))?;
    let d = features.dim;
    if d == 0 {
        bail!("{name}: the features have dim 0 (a feature vector needs at least one value)");
    }
    if label_names.len() < 2 {
        bail!("{name}: {} label names; a head needs at least two", label_names.len());
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{name}: {e}"))?;
    let mat = |x: &str, y: &str| -> Result<Matrix> {
        let tensor = |k: &str, dtype: safetensors::Dtype| {
            let t = st.tensor(k).map_err(|_| anyhow!("{name}: no tensor {k}"))?;
            if t.dtype() != dtype {
                bail!("{name}: tensor {k} is {:?}, expected {dtype:?}", t.dtype());
            }
            Ok(t)
        };
        let (tx, ty) = (tensor(x, safetensors::Dtype::F32)?, tensor(y, safetensors::Dtype::U32)?);
        let &[rows] = ty.shape() else { bail!("{name}: tensor {y} has shape {:?}, expected one label per row", ty.shape()) };
        // safetensors checked that each shape matches its byte length, so rows × d is bounded by the file
        if tx.shape() != [rows, d] {
            bail!("{name}: tensor {x} has shape {:?}, expected [{rows}, {d}] ({rows} labels in {y}, dim {d} in the metadata)", tx.shape());
        }
        let m = Matrix {
            x: tx.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            y: ty.data().chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
            names: (0..rows).map(|i| (format!("row{i}"), None)).collect(),
        };
        if let Some((i, v)) = m.y.iter().enumerate().find(|(_, v)| **v as usize >= label_names.len()) {
            bail!("{name}: {y} row {i} has label index {v}, but the file names {} labels", label_names.len());
        }
        if let Some(i) = m.x.iter().position(|v| !v.is_finite()) {
            bail!("{name}: {x} row {} column {} is not finite ({})", i / d, i % d, m.x[i]);
        }
        Ok(m)
    };
    if features.pooling.level() != a.level {
        bail!("{name}: these features are for --level {}", level_name(features.pooling.level()));
    }
    Ok(Prepared {
        train: mat("x_train", "y_train")?,
        test: mat("x_test", "y_test")?,
        backbone: serde_json::from_value(field("backbone")).map_err(|e| anyhow!("{name}: metadata field backbone: {e}"))?,
        context: serde_json::from_value(field("context")).map_err(|e| anyhow!("{name}: metadata field context: {e}"))?,
        about: field("data"),
        backend: format!("features loaded from {name}"),
        features,
        label_names,
    })
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Read => "read",
        Level::Position => "position",
    }
}

fn confusion_text(labels: &[String], s: &Scores) -> String {
    let w = labels.iter().map(|l| l.len()).max().unwrap_or(1).max(6);
    let mut t = format!("{:w$}", "");
    for l in labels {
        t += &format!(" {l:>w$}");
    }
    for (i, row) in s.confusion.iter().enumerate() {
        t += &format!("\n{:w$}", labels[i]);
        for v in row {
            t += &format!(" {v:>w$}");
        }
    }
    t
}

fn predict_all(head: &Head, x: &[f32]) -> Vec<f32> {
    let (d, c) = (head.dim(), head.n_labels());
    let mut out = vec![0f32; x.len() / d.max(1) * c];
    use rayon::prelude::*;
    out.par_chunks_mut(c * 256).zip(x.par_chunks(d * 256)).for_each(|(o, x)| {
        let mut s = Scratch::default();
        for (o, x) in o.chunks_mut(c).zip(x.chunks(d)) {
            head.predict(x, &mut s, o);
        }
    });
    out
}

fn write_predictions(path: &Path, inputs: &[String], head: &Head, m: &Matrix, probs: &[f32]) -> Result<()> {
    let c = head.n_labels();
    let mut w = Csv::new(Output::open(Some(path), inputs)?);
    let position = m.names.first().is_some_and(|n| n.1.is_some());
    let lead: &[&str] = if position { &["chrom", "pos", "label", "predicted"] } else { &["id", "label", "predicted"] };
    let cols: Vec<String> = head.meta.labels.iter().map(|l| format!("p_{l}")).collect();
    w.header(lead, &cols)?;
    for (i, (id, pos)) in m.names.iter().enumerate() {
        let p = &probs[i * c..(i + 1) * c];
        let mut row = w.start_row();
        row.text(id)?;
        if let Some(pos) = pos {
            row.int(*pos)?;
        }
        row.text(&head.meta.labels[m.y[i] as usize])?.text(&head.meta.labels[argmax(p)])?.floats(p.iter().copied())?;
        row.end()?;
    }
    w.into_inner()?.finish()
}

/// Backbone features of both splits on `backend`: (train, test, feature width, context, the
/// featurizer's description).
fn backbone_features<B: Backend>(backend: B, a: &TrainArgs, data: &Data, model: Arc<Model>, pooling: Pooling) -> Result<(Matrix, Matrix, usize, usize, String)> {
    let (context, overlap) = a.tiles.resolve(&model);
    if overlap >= context {
        bail!("--overlap ({overlap}) must be smaller than --context ({context})");
    }
    let mut emb = Embedder::new(backend, model.clone(), a.strand, Feature::Hidden, context, overlap)?;
    emb.set_layers(&ascending_layers(&a.layers))?;
    let (rows, width) = (data.train.rows() + data.test.rows(), emb.width());
    let mut bf = BackboneFeatures::new(emb, pooling);
    if a.with_kmers {
        let mut f = WithKmers::new(bf, &a.k, pooling)?;
        // one pooled row is f.dim() values (bins are refused with k-mers)
        check_feature_size(rows, f.dim(), Pooling::Mean)?;
        let (tr, te) = featurize(a, data, &mut f)?;
        return Ok((tr, te, f.dim(), context, f.describe()));
    }
    check_feature_size(rows, width, pooling)?;
    let (tr, te) = featurize(a, data, &mut bf)?;
    Ok((tr, te, bf.dim(), context, bf.describe()))
}

/// Features of both splits.
fn featurize(a: &TrainArgs, data: &Data, f: &mut dyn Featurizer) -> Result<(Matrix, Matrix)> {
    let mut progress = Progress::new(a.common.quiet);
    let index: HashMap<&str, u32> = data.label_names.iter().enumerate().map(|(i, l)| (l.as_str(), i as u32)).collect();
    let mut one = |split: &Split| -> Result<Matrix> {
        let mut m = Matrix::default();
        let mut row = Vec::new();
        match split {
            Split::Reads(recs) => {
                // short records in batches where the featurizer takes them (packed contexts)
                let policy = Policy { limit: f.batch_limit(), max_bases: f.batch_bases() };
                let lens: Vec<usize> = recs.iter().map(|r| r.tokens.len()).collect();
                for (range, packed) in batch::ranges(&lens, policy) {
                    let group = &recs[range];
                    if packed {
                        let refs: Vec<&[u8]> = group.iter().map(|r| r.tokens.as_slice()).collect();
                        f.read_batch(&refs, &mut m.x).with_context(|| format!("records '{}' to '{}'", group[0].id, group[group.len() - 1].id))?;
                    } else {
                        let r = &group[0];
                        f.read(&r.tokens, &mut row, &mut |n| progress.bases(n)).with_context(|| format!("record '{}'", r.id))?;
                        m.x.extend_from_slice(&row);
                    }
                    for r in group {
                        m.y.push(index[r.label.as_str()]);
                        m.names.push((r.id.clone(), None));
                        progress.record_done(r.tokens.len());
                    }
                }
            }
            Split::Genome(stretches) => {
                let g = data.genome.as_ref().expect("genome data");
                for s in stretches {
                    let toks = &g.tokens[s.chrom][s.start..s.end];
                    f.positions_at(toks, &s.at, &mut m.x, &mut |n| progress.bases(n))?;
                    for &p in &s.at {
                        m.y.push(g.labels[s.chrom][s.start + p] as u32);
                        m.names.push((g.ids[s.chrom].clone(), Some(s.start + p)));
                    }
                    progress.record_done(s.end - s.start);
                }
            }
        }
        Ok(m)
    };
    let train = one(&data.train)?;
    let test = one(&data.test)?;
    progress.finish();
    Ok((train, test))
}

/// Labelled records of some FASTA/FASTQ files, their labels from `table` or from headers.
fn read_labelled(inputs: &[String], vocab: &Vocab, table: Option<&LabelTable>, used: &mut HashSet<String>, skip_bad: bool, skipped: &mut usize) -> Result<Vec<Rec>> {
    let mut out = Vec::new();
    for input in inputs {
        let mut reader = crate::io::fastx::Reader::open(input)?;
        let name = reader.name().to_string();
        while let Some(rec) = reader.next_record() {
            let rec = match rec {
                Ok(r) => r,
                Err(e) if skip_bad && e.skippable => {
                    eprintln!("skipped: {e}");
                    *skipped += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let (id, desc) = (rec.id.as_str(), rec.desc.as_str());
            let seq = rec.seq;
            if seq.is_empty() {
                let msg = format!("{name}: record '{id}': empty sequence");
                if skip_bad {
                    eprintln!("skipped: {msg}");
                    *skipped += 1;
                    continue;
                }
                bail!(msg);
            }
            let label = match table {
                Some(t) => match t.rows.get(id) {
                    Some((l, _)) => l.clone(),
                    None => bail!("{name}: record '{id}' has no row in {}", t.name),
                },
                None => match header_label(desc) {
                    Some(l) => l.to_string(),
                    None => bail!("{name}: record '{id}' has no label (no label=NAME in its header; or give --labels FILE)"),
                },
            };
            if !used.insert(id.to_string()) {
                bail!("{name}: record id '{id}' appears twice (ids must be unique to be labelled)");
            }
            let mut tokens = Vec::new();
            vocab.encode_into(&seq, &mut tokens);
            out.push(Rec { id: id.to_string(), tokens, label });
        }
    }
    Ok(out)
}

fn read_data(a: &TrainArgs, vocab: &Vocab) -> Result<Data> {
    if a.bed.is_some() || a.gff.is_some() || !a.test_chroms.is_empty() || a.label.is_some() {
        bail!("--bed, --gff, --label and --test-chroms are for --level position");
    }
    let table = a.labels.as_deref().map(LabelTable::load).transpose()?;
    let mut used = HashSet::new();
    let mut skipped = 0;
    let mut train = read_labelled(&a.inputs, vocab, table.as_ref(), &mut used, a.common.skip_bad, &mut skipped)?;
    let mut test = read_labelled(&a.test, vocab, table.as_ref(), &mut used, a.common.skip_bad, &mut skipped)?;
    if let Some(t) = &table {
        let mut unknown: Vec<(&String, usize)> = t.rows.iter().filter(|(id, _)| !used.contains(*id)).map(|(id, (_, n))| (id, *n)).collect();
        if !unknown.is_empty() {
            unknown.sort_by_key(|u| u.1);
            bail!(
                "{}: {} label row{} name{} no input record (first: '{}' on line {})",
                t.name,
                unknown.len(),
                if unknown.len() == 1 { "" } else { "s" },
                if unknown.len() == 1 { "s" } else { "" },
                unknown[0].0,
                unknown[0].1
            );
        }
    }
    let split_about = if a.test.is_empty() {
        // stratified hold-out of records
        let names: Vec<String> = train.iter().map(|r| r.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let idx: HashMap<&str, u32> = names.iter().enumerate().map(|(i, l)| (l.as_str(), i as u32)).collect();
        let y: Vec<u32> = train.iter().map(|r| idx[r.label.as_str()]).collect();
        let (keep, held) = fit::stratified_split(&y, names.len(), a.test_fraction, a.seed);
        let held: HashSet<usize> = held.into_iter().collect();
        let all = std::mem::take(&mut train);
        for (i, r) in all.into_iter().enumerate() {
            if held.contains(&i) {
                test.push(r);
            } else {
                train.push(r);
            }
        }
        debug_assert_eq!(keep.len(), train.len());
        format!("stratified random {:.0}% of records held out (seed {})", a.test_fraction * 100.0, a.seed)
    } else {
        format!("held-out files: {}", a.test.join(", "))
    };
    let names: Vec<String> = train.iter().map(|r| r.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if names.len() < 2 {
        bail!("the training records carry {} label{}: a head needs at least two", names.len(), if names.len() == 1 { "" } else { "s" });
    }
    if let Some(r) = test.iter().find(|r| !names.contains(&r.label)) {
        bail!("held-out record '{}' has label '{}', which no training record has", r.id, r.label);
    }
    if test.is_empty() {
        bail!("no held-out records (too few records to split off {:.0}%)", a.test_fraction * 100.0);
    }
    let count = |v: &[Rec]| -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for l in &names {
            m.insert(l.clone(), json!(v.iter().filter(|r| &r.label == l).count()));
        }
        serde_json::Value::Object(m)
    };
    let about = json!({
        "inputs": a.inputs, "test_inputs": a.test,
        "labels_from": a.labels.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "label= in headers".into()),
        "split": split_about,
        "records": {"train": count(&train), "test": count(&test)},
        "skipped_unreadable": skipped,
    });
    Ok(Data { label_names: names, train: Split::Reads(train), test: Split::Reads(test), genome: None, about })
}

/// Sequences of FASTA files as tokens.
fn read_genome(inputs: &[String], skip_bad: bool, vocab: &Vocab) -> Result<(Vec<String>, Vec<Vec<u8>>)> {
    let (mut ids, mut seqs) = (Vec::new(), Vec::new());
    let mut totals = Totals::default();
    let mut tokens = Vec::new();
    for_each_record(inputs, skip_bad, vocab, &mut totals, &mut tokens, &mut |id, toks| {
        if ids.iter().any(|i| i == id) {
            bail!("sequence id '{id}' appears twice");
        }
        ids.push(id.to_string());
        seqs.push(toks.to_vec());
        Ok(())
    })?;
    Ok((ids, seqs))
}

/// The token ids of the data: the backbone's (its folder's tokenizer.json) or, for k-mer
/// features, the Caduceus ids `kmer` reads. Known before any data is read, so that records
/// are tokenized once, as the model reads them.
fn data_vocab(a: &TrainArgs) -> Result<Vocab> {
    match (a.features, &a.common.model) {
        (Source::Backbone, Some(dir)) => {
            let dir = crate::model::hub::resolve(dir).with_context(|| format!("model {}", dir.display()))?;
            Ok(Vocab::load(&dir).map_err(|e| anyhow!("model {}: {e}", dir.display()))?.unwrap_or_else(crate::model::vocab::caduceus))
        }
        _ => Ok(crate::model::vocab::caduceus()),
    }
}

fn genome_data(a: &TrainArgs, vocab: &Vocab) -> Result<Data> {
    if a.labels.is_some() {
        bail!("--labels is for --level read (position level takes --bed or --gff)");
    }
    if a.stretch < 100 {
        bail!("--stretch must be at least 100 bases");
    }
    let (intervals, source) = match (&a.bed, &a.gff) {
        (Some(p), None) => (labels::read_bed(p, a.label.as_deref())?, format!("BED {}", p.display())),
        (None, Some(p)) => (labels::read_gff(p, &a.types, a.label.as_deref())?, format!("GFF3 {} (types {})", p.display(), a.types.join(","))),
        _ => bail!("--level position needs labelled intervals: --bed FILE or --gff FILE"),
    };
    if intervals.is_empty() {
        bail!("{source}: no intervals{}", if a.gff.is_some() { " of the chosen --types" } else { "" });
    }
    let (mut ids, mut tokens) = read_genome(&a.inputs, a.common.skip_bad, vocab)?;
    let n_train_seqs = ids.len();
    let (tids, ttoks) = read_genome(&a.test, a.common.skip_bad, vocab)?;
    for id in &tids {
        if ids.contains(id) {
            bail!("sequence '{id}' is both in the inputs and in --test");
        }
    }
    ids.extend(tids);
    tokens.extend(ttoks);
    if ids.is_empty() {
        bail!("the genome input has no sequences");
    }
    for c in &a.test_chroms {
        if !ids.contains(c) {
            bail!("--test-chroms {c}: no such sequence in the inputs (sequences: {})", preview(&ids));
        }
    }
    if !a.test.is_empty() && !a.test_chroms.is_empty() {
        bail!("--test and --test-chroms exclude each other");
    }
    // labels per base
    let mut names: Vec<String> = intervals.iter().map(|i| i.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if !names.contains(&a.background) {
        names.push(a.background.clone());
    }
    if names.len() > 255 {
        bail!("{source}: more than 255 labels");
    }
    let index: HashMap<String, u8> = names.iter().enumerate().map(|(i, l)| (l.clone(), i as u8)).collect();
    let bg = index[&a.background];
    let mut by_chrom: HashMap<&str, Vec<&Interval>> = HashMap::new();
    for iv in &intervals {
        by_chrom.entry(iv.chrom.as_str()).or_default().push(iv);
    }
    let matched = ids.iter().filter(|id| by_chrom.contains_key(id.as_str())).count();
    if matched == 0 {
        let mut chroms: Vec<&str> = by_chrom.keys().copied().collect();
        chroms.sort();
        bail!("{source}: no interval lies on a genome sequence (intervals name {}; the genome has {})", preview(&chroms), preview(&ids));
    }
    let unmatched: Vec<&str> = by_chrom.keys().copied().filter(|c| !ids.iter().any(|i| i == c)).collect();
    if !unmatched.is_empty() && !a.common.quiet {
        eprintln!("warning: {source}: intervals on {} sequence(s) not in the genome are ignored ({})", unmatched.len(), preview(&unmatched));
    }
    let labels: Vec<Vec<u8>> = ids
        .iter()
        .zip(&tokens)
        .map(|(id, t)| labels::paint(t.len(), by_chrom.get(id.as_str()).map(|v| &v[..]).unwrap_or(&[]), &index, bg))
        .collect();
    // stretches: sequences without intervals still count (all background), as they would in use
    let mut train_s = Vec::new();
    let mut test_s = Vec::new();
    let mut rng = Rng::new(a.seed);
    for (c, t) in tokens.iter().enumerate() {
        let mut s = 0;
        while s < t.len() {
            let e = (s + a.stretch).min(t.len());
            let bases = t[s..e].iter().filter(|&&x| vocab.nucleotide(x).is_some()).count();
            if e - s >= a.stretch / 4 && bases * 2 >= e - s {
                let st = Stretch { chrom: c, start: s, end: e, at: Vec::new() };
                let held = if !a.test.is_empty() {
                    c >= n_train_seqs
                } else if !a.test_chroms.is_empty() {
                    a.test_chroms.contains(&ids[c])
                } else {
                    rng.unit() < a.test_fraction
                };
                if held { test_s.push(st) } else { train_s.push(st) }
            }
            s = e;
        }
    }
    // a random split of few stretches can leave one side empty: move one stretch across
    if a.test.is_empty() && a.test_chroms.is_empty() && train_s.len() + test_s.len() >= 2 {
        if test_s.is_empty() {
            let i = rng.below(train_s.len());
            test_s.push(train_s.remove(i));
        } else if train_s.is_empty() {
            let i = rng.below(test_s.len());
            train_s.push(test_s.remove(i));
        }
    }
    if train_s.is_empty() || test_s.is_empty() {
        bail!("the genome gives {} training and {} held-out stretches of {} bases: both need at least one (use a smaller --stretch?)", train_s.len(), test_s.len(), a.stretch);
    }
    let total: usize = train_s.iter().chain(&test_s).map(|s| s.end - s.start).sum();
    let budget = |v: &mut Vec<Stretch>, share: f64, rng: &mut Rng| {
        let cap = (a.max_bases as f64 * share).max(1.0) as usize;
        rng.shuffle(v);
        let mut used = 0;
        // keep at least one stretch
        let keep = v.iter().take_while(|s| {
            let ok = used == 0 || used + (s.end - s.start) <= cap;
            used += s.end - s.start;
            ok
        });
        let n = keep.count();
        v.truncate(n);
        v.sort_by_key(|s| (s.chrom, s.start));
    };
    if total > a.max_bases {
        budget(&mut train_s, 1.0 - a.test_fraction, &mut rng);
        budget(&mut test_s, a.test_fraction, &mut rng);
    }
    // sample positions (ACGT bases only)
    let sample = |v: &mut Vec<Stretch>, rng: &mut Rng| {
        let bases: usize = v.iter().map(|s| s.end - s.start).sum();
        let rate = (a.max_positions as f64 / bases.max(1) as f64).min(1.0);
        for s in v.iter_mut() {
            let t = &tokens[s.chrom][s.start..s.end];
            s.at = (0..t.len()).filter(|&p| vocab.nucleotide(t[p]).is_some() && (rate >= 1.0 || rng.unit() < rate)).collect();
        }
    };
    sample(&mut train_s, &mut rng);
    sample(&mut test_s, &mut rng);
    // labels present in training positions; held-out positions of other labels are dropped
    let mut seen = vec![0usize; names.len()];
    for s in &train_s {
        s.at.iter().for_each(|&p| seen[labels[s.chrom][s.start + p] as usize] += 1);
    }
    let present: Vec<usize> = (0..names.len()).filter(|&i| seen[i] > 0).collect();
    if present.len() < 2 {
        bail!("the sampled training positions carry fewer than two labels ({}); more --max-bases or --max-positions?", present.iter().map(|&i| names[i].as_str()).collect::<Vec<_>>().join(", "));
    }
    let mut remap = vec![u8::MAX; names.len()];
    present.iter().enumerate().for_each(|(new, &old)| remap[old] = new as u8);
    let labels: Vec<Vec<u8>> = labels.into_iter().map(|v| v.into_iter().map(|l| remap[l as usize]).collect()).collect();
    let names: Vec<String> = present.iter().map(|&i| names[i].clone()).collect();
    let mut dropped = 0;
    for s in &mut test_s {
        let before = s.at.len();
        s.at.retain(|&p| labels[s.chrom][s.start + p] != u8::MAX);
        dropped += before - s.at.len();
    }
    if dropped > 0 && !a.common.quiet {
        eprintln!("warning: {dropped} held-out positions carry labels absent from the training positions and are not scored");
    }
    let count = |v: &[Stretch]| -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (i, l) in names.iter().enumerate() {
            let n: usize = v.iter().map(|s| s.at.iter().filter(|&&p| labels[s.chrom][s.start + p] as usize == i).count()).sum();
            m.insert(l.clone(), json!(n));
        }
        serde_json::Value::Object(m)
    };
    let split = if !a.test.is_empty() {
        format!("held-out sequences from {}", a.test.join(", "))
    } else if !a.test_chroms.is_empty() {
        format!("held-out sequences {}", a.test_chroms.join(","))
    } else {
        format!("random {:.0}% of {}-base stretches held out (seed {})", a.test_fraction * 100.0, a.stretch, a.seed)
    };
    let about = json!({
        "inputs": a.inputs, "test_inputs": a.test, "intervals": source, "background": a.background,
        "split": split,
        "stretch": a.stretch,
        "stretches": {"train": train_s.len(), "test": test_s.len()},
        "bases": {"train": train_s.iter().map(|s| s.end - s.start).sum::<usize>(), "test": test_s.iter().map(|s| s.end - s.start).sum::<usize>()},
        "positions": {"train": count(&train_s), "test": count(&test_s)},
    });
    Ok(Data { label_names: names, train: Split::Genome(train_s), test: Split::Genome(test_s), genome: Some(Genome { ids, tokens, labels }), about })
}

fn preview<S: AsRef<str>>(v: &[S]) -> String {
    let mut s: Vec<&str> = v.iter().take(5).map(|x| x.as_ref()).collect();
    if v.len() > 5 {
        s.push("...");
    }
    s.join(", ")
}
