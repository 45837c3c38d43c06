//! `dna-mamba train`: fit a head on frozen backbone features (or k-mer frequencies, the
//! baseline), score it on held-out data, and write it.
//!
//! Read level: labelled records (an id,label table or `label=` in headers); held out: `--test`
//! files or a stratified fraction of records. Position level: a genome plus BED/GFF3 intervals;
//! the genome is cut into stretches that are run through the model one by one, so a held-out
//! stretch never overlaps, nor sees, training sequence; positions are subsampled to bound
//! memory. Data and labels are checked before any model work.
//!
//! Here: the run from checked options to the written head and its scores. `args` (the
//! flags), `dataset` (labelled records or genome stretches, split), `featurize` (feature
//! matrices of both splits), `feature_file` (`--save-features` / `--load-features`),
//! `predictions` (held-out probabilities, `--predictions` CSV).

mod args;
mod dataset;
mod feature_file;
mod featurize;
mod predictions;

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

pub use args::TrainArgs;
use featurize::Prepared;
use crate::cli::flag_value;
use crate::heads::fit::{self, FitOptions, MlpOptions};
use crate::heads::metrics::{self, Scores};
use crate::heads::{self, Head, Kind, Level, Meta, Pooling, Source};

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
        bail!("--pool {pooling} is for {} level; at {} level use {}", flag_value(&pooling.level()), flag_value(&a.level), match a.level {
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
        Some(p) => feature_file::load(p, a.level)?,
        None => featurize::compute(&a, pooling)?,
    };
    if let Some(p) = &a.save_features {
        feature_file::save(p, &prep)?;
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
    let train_probs = predictions::predict_all(&head, &train.x);
    let test_probs = predictions::predict_all(&head, &test.x);
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
        predictions::write(p, &a.inputs, &head, &test, &test_probs)?;
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
