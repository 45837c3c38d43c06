//! `dna-mamba classify`: run task heads on FASTA/FASTQ. Read-level heads give one CSV row per
//! record (`id,length,label,p_<label>...`); a position-level head gives runs of its most
//! probable label as BED6 or one label's probability per base as bedGraph, streamed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};

use super::{for_each_record, load_model, select_backend, with_backend, Common, Totals, Tiles};
use crate::backend::Backend;
use crate::batch::{Batcher, Group, Policy};
use crate::embed::{Embedder, Feature};
use crate::heads::features::{WithKmers, BackboneFeatures, Featurizer, KmerFeatures};
use crate::heads::metrics::argmax;
use crate::heads::{self, Head, Level, Scratch, Source};
use crate::model::Model;
use crate::output::bed::{Bed, BedGraph, PositionWriter};
use crate::output::smooth::Smoothed;
use crate::output::csv::Csv;
use crate::output::Output;
use crate::progress::Progress;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    /// One row per record: id,length,label,p_<label>... (read-level heads).
    Csv,
    /// Runs of the most probable label per base as BED6 (a position-level head).
    Bed,
    /// One label's probability per base as bedGraph (a position-level head).
    Bedgraph,
}

/// Shipped heads used when no --head is given.
pub const DEFAULT_READ_HEAD: &str = "origin";
pub const DEFAULT_POSITION_HEAD: &str = "coding";

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// FASTA/FASTQ files, plain or compressed; `-` is stdin.
    #[arg(default_value = "-")]
    pub inputs: Vec<String>,
    #[command(flatten)]
    pub common: Common,
    /// A head file, or the name of a built-in head (`origin`, `coding`; see models/heads/), or
    /// of a head in the folder $DNA_MAMBA_HEADS (NAME.safetensors; it replaces the built-in
    /// ones). Repeat for several read-level heads. [default: `origin` for CSV, `coding` for
    /// BED/bedGraph]
    #[arg(long = "head", value_name = "H")]
    pub heads: Vec<String>,
    /// Output file (`-` = stdout); `.gz` compresses. Written only on success.
    #[arg(short = 'o', long = "out", value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Output format [default: csv for read-level heads, bed for a position-level head].
    #[arg(long, value_enum)]
    pub format: Option<OutFormat>,
    /// bedgraph: the label whose probability is written [default: the first label that is not
    /// the head's background]. bed: write only the runs of this label.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// CSV: call a record `unassigned` when no label reaches this probability [default: the
    /// head's threshold, chosen on held-out data by `train --call-precision`; 0: always the
    /// most probable label].
    #[arg(long = "min-p", value_name = "P")]
    pub min_p: Option<f32>,
    /// bed/bedgraph: each base's probabilities averaged over the W bases centered on it
    /// (clipped at the record's ends) before the call [default: 1, as computed].
    #[arg(long, value_name = "W", default_value_t = 1)]
    pub smooth: usize,
    /// bed: runs shorter than N bases join the run before them (a record's first, the run
    /// after it); scores are the mean over the joined run [default: 1, every run as called].
    #[arg(long = "min-run", value_name = "N", default_value_t = 1)]
    pub min_run: usize,
    #[command(flatten)]
    pub tiles: Tiles,
}

/// The label of a record whose top probability is under the head's call threshold.
const UNASSIGNED: &str = "unassigned";

pub fn run(a: ClassifyArgs) -> Result<()> {
    let names: Vec<String> = if a.heads.is_empty() {
        let name = match a.format {
            Some(OutFormat::Bed | OutFormat::Bedgraph) => DEFAULT_POSITION_HEAD,
            _ => DEFAULT_READ_HEAD,
        };
        vec![name.to_string()]
    } else {
        a.heads.clone()
    };
    let mut heads = Vec::new();
    for n in &names {
        heads.push(match heads::find(n) {
            Ok(h) => h,
            Err(e) if a.heads.is_empty() => bail!("no --head given and the default head is missing: {e:#}"),
            Err(e) => return Err(e),
        });
    }
    let level = heads[0].meta.level;
    if let Some(h) = heads.iter().find(|h| h.meta.level != level) {
        bail!("heads '{}' and '{}' work at different levels (read / position): run them separately", heads[0].meta.task, h.meta.task);
    }
    let format = a.format.unwrap_or(if level == Level::Read { OutFormat::Csv } else { OutFormat::Bed });
    match (level, format) {
        (Level::Read, OutFormat::Bed | OutFormat::Bedgraph) => {
            bail!("head '{}' gives one label per read: use --format csv (bed/bedgraph are for position-level heads)", heads[0].meta.task)
        }
        (Level::Position, OutFormat::Csv) => bail!("head '{}' gives a label per base: use --format bed or bedgraph", heads[0].meta.task),
        (Level::Position, _) if heads.len() > 1 => bail!("one position-level head per run (got {})", heads.len()),
        (Level::Read, _) if a.label.is_some() => bail!("--label is for bed/bedgraph output"),
        (Level::Position, _) if a.min_p.is_some() => bail!("--min-p is for read-level heads (CSV output)"),
        (Level::Read, _) if a.smooth != 1 || a.min_run != 1 => bail!("--smooth and --min-run are for bed/bedgraph output of a position-level head"),
        (_, OutFormat::Bedgraph) if a.min_run != 1 => bail!("--min-run joins BED runs; bedgraph writes probabilities (use --smooth)"),
        _ => {}
    }
    if a.smooth == 0 || a.min_run == 0 {
        bail!("--smooth and --min-run must be at least 1");
    }
    if let Some(p) = a.min_p.filter(|p| !(0.0..=1.0).contains(p)) {
        bail!("--min-p {p}: expected a probability from 0 to 1");
    }
    if let Some(h) = heads.iter().find(|h| h.meta.features != heads[0].meta.features) {
        bail!(
            "heads '{}' and '{}' read different features ({} vs {}): run them separately",
            heads[0].meta.task,
            h.meta.task,
            feature_text(&heads[0]),
            feature_text(h)
        );
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(h) = heads.iter().find(|h| !seen.insert(h.meta.task.clone())) {
        bail!("two heads have the task name '{}': their columns would clash", h.meta.task);
    }
    // a missing input should fail before anything is written
    for input in &a.inputs {
        if input != "-" {
            std::fs::metadata(input).with_context(|| input.clone())?;
        }
    }
    let plan = Plan { a: &a, heads: &heads, format };
    let f = &heads[0].meta.features;
    match f.source {
        Source::Kmer => {
            let mut km = KmerFeatures::new(&f.k, f.pooling)?;
            plan.classify(&mut km)
        }
        Source::Backbone => {
            let model = load_model(&a.common)?;
            let fp = heads::fingerprint(&model);
            for h in &heads {
                h.check_backbone(Some((&model, &fp)))?;
            }
            with_backend!(select_backend(&a.common, &model, a.tiles.chunk)?, b => classify_backbone(b, plan, model.clone()))
        }
    }
}

/// Classify through the backbone on `backend`: the embedder the heads were trained with.
fn classify_backbone<B: Backend>(backend: B, plan: Plan<'_>, model: Arc<Model>) -> Result<()> {
    let a = plan.a;
    let (context, overlap) = a.tiles.resolve(&model);
    if overlap >= context {
        bail!("--overlap ({overlap}) must be smaller than --context ({context})");
    }
    let f = &plan.heads[0].meta.features;
    let mut emb = Embedder::new(backend, model.clone(), heads::parse_strand(&f.strand)?, Feature::Hidden, context, overlap)?;
    emb.set_layers(&f.layers)?;
    let bf = BackboneFeatures::new(emb, f.pooling);
    if f.k.is_empty() {
        return plan.run_on(bf, f.dim);
    }
    // a head fitted with --with-kmers: the same k-mer frequencies after the states
    plan.run_on(WithKmers::new(bf, &f.k, f.pooling)?, f.dim)
}

fn feature_text(h: &Head) -> String {
    let f = &h.meta.features;
    match f.source {
        Source::Backbone if !f.k.is_empty() => format!("backbone with k-mers {:?}, strand {}, pool {}", f.k, f.strand, f.pooling),
        Source::Backbone => format!("backbone, strand {}, pool {}", f.strand, f.pooling),
        Source::Kmer => format!("k-mers {:?}, pool {}", f.k, f.pooling),
    }
}

struct Plan<'a> {
    a: &'a ClassifyArgs,
    heads: &'a [Head],
    format: OutFormat,
}

impl Plan<'_> {
    /// `classify` with features of the width the head reads.
    fn run_on(&self, mut feats: impl Featurizer, dim: usize) -> Result<()> {
        if feats.dim() != dim {
            bail!("internal: the model gives {} features, the head reads {dim}", feats.dim());
        }
        self.classify(&mut feats)
    }

    fn classify(&self, feats: &mut dyn Featurizer) -> Result<()> {
        let a = self.a;
        let mut progress = Progress::new(a.common.quiet);
        let started = Instant::now();
        let mut totals = Totals::default();
        let mut tokens = Vec::new();
        let out = Output::open(a.out.as_deref(), &a.inputs)?;
        let out = match self.format {
            OutFormat::Csv => self.read_level(out, feats, &mut progress, &mut totals, &mut tokens)?,
            _ => self.position_level(out, feats, &mut progress, &mut totals, &mut tokens)?,
        };
        if totals.records == 0 && !a.common.quiet {
            progress.warn("warning: the input has no records; wrote a header only");
        }
        out.finish()?;
        progress.finish();
        if !a.common.quiet {
            let tasks: Vec<&str> = self.heads.iter().map(|h| h.meta.task.as_str()).collect();
            let what = format!(" with {}", tasks.join(", "));
            totals.report("classified ", &what, started.elapsed().as_secs_f64(), &feats.describe());
        }
        Ok(())
    }

    fn read_level(&self, out: Output, feats: &mut dyn Featurizer, progress: &mut Progress, totals: &mut Totals, tokens: &mut Vec<u8>) -> Result<Output> {
        let vocab = feats.vocab().clone();
        let heads = self.heads;
        let mut w = Csv::new(out);
        let prefix = |h: &Head| if heads.len() > 1 { format!("{}.", h.meta.task) } else { String::new() };
        let mut cols = Vec::new();
        for h in heads {
            let p = prefix(h);
            cols.push(format!("{p}label"));
            cols.extend(h.meta.labels.iter().map(|l| format!("{p}p_{l}")));
        }
        w.header(&["id", "length"], &cols)?;
        let mut x = Vec::new();
        let mut scratch = Scratch::default();
        let mut probs = Vec::new();
        // one output row: id, length, then each head's label and probabilities
        let mut write = |w: &mut Csv<Output>, id: &str, len: usize, x: &[f32]| -> Result<()> {
            let mut row = w.start_row();
            row.text(id)?.int(len)?;
            for h in heads {
                probs.resize(h.n_labels(), 0.0);
                h.predict(x, &mut scratch, &mut probs);
                let k = argmax(&probs);
                let floor = self.a.min_p.or(h.meta.call_threshold).unwrap_or(0.0);
                let label = if probs[k] >= floor { h.meta.labels[k].as_str() } else { UNASSIGNED };
                row.text(label)?.floats(probs.iter().copied())?;
            }
            row.end().with_context(|| format!("record '{id}'"))
        };
        // short records go to the featurizer in batches where it takes them (packed contexts)
        let dim = feats.dim();
        let mut batcher = Batcher::new(Policy { limit: feats.batch_limit(), max_bases: feats.batch_bases() });
        type Write<'w> = dyn FnMut(&mut Csv<Output>, &str, usize, &[f32]) -> Result<()> + 'w;
        // a packed group: features of all its records in one call, rows in input order
        let run_group = |g: Group<(String, Vec<u8>)>,
                         feats: &mut dyn Featurizer,
                         w: &mut Csv<Output>,
                         progress: &mut Progress,
                         x: &mut Vec<f32>,
                         write: &mut Write|
         -> Result<()> {
            let batch = g.into_records();
            x.clear();
            let refs: Vec<&[u8]> = batch.iter().map(|(_, t)| t.as_slice()).collect();
            feats.read_batch(&refs, x).with_context(|| format!("a batch of {} records ('{}' to '{}')", batch.len(), batch[0].0, batch[batch.len() - 1].0))?;
            for ((id, t), row) in batch.iter().zip(x.chunks(dim)) {
                write(w, id, t.len(), row)?;
                progress.record_done(t.len());
            }
            Ok(())
        };
        let mut row = Vec::new();
        let read = for_each_record(&self.a.inputs, self.a.common.skip_bad, &vocab, totals, tokens, &mut |id, toks| {
            let mut emit = |g: Group<(String, Vec<u8>)>| run_group(g, feats, &mut w, progress, &mut x, &mut write);
            if batcher.packs(toks.len()) {
                return batcher.push((id.to_string(), toks.to_vec()), toks.len(), &mut emit);
            }
            // a long record, from the reader's buffer: the pending short ones go first
            batcher.flush(&mut emit)?;
            feats.read(toks, &mut row, &mut |n| progress.bases(n))?;
            write(&mut w, id, toks.len(), &row)?;
            progress.record_done(toks.len());
            Ok(())
        });
        // records read before an input error are still classified and written
        let flushed = batcher.flush(&mut |g| run_group(g, feats, &mut w, progress, &mut x, &mut write));
        read?;
        flushed?;
        w.into_inner()
    }

    fn position_level(&self, out: Output, feats: &mut dyn Featurizer, progress: &mut Progress, totals: &mut Totals, tokens: &mut Vec<u8>) -> Result<Output> {
        let vocab = feats.vocab().clone();
        let head = &self.heads[0];
        let labels = &head.meta.labels;
        let chosen = match &self.a.label {
            Some(l) => Some(labels.iter().position(|x| x == l).ok_or_else(|| {
                anyhow!("--label {l}: head '{}' has labels {}", head.meta.task, labels.join(", "))
            })?),
            None => None,
        };
        let mut writer = match self.format {
            OutFormat::Bed => {
                let keep = (0..labels.len()).map(|i| chosen.is_none_or(|c| c == i)).collect();
                Writer::Bed(Bed::new(out, labels, keep).with_min_run(self.a.min_run))
            }
            _ => {
                let label = match chosen {
                    Some(c) => c,
                    None => labels.iter().position(|l| Some(l) != head.meta.background.as_ref()).unwrap_or(0),
                };
                Writer::Graph(BedGraph::new(out, label, &format!("{} p({})", head.meta.task, labels[label]))?)
            }
        };
        let mut scratch = Scratch::default();
        let mut probs = vec![0.0; labels.len()];
        let mut smoothed = Smoothed::new(writer.get_mut(), self.a.smooth);
        let w = &mut smoothed;
        for_each_record(&self.a.inputs, self.a.common.skip_bad, &vocab, totals, tokens, &mut |id, toks| {
            w.start(id)?;
            feats.positions(
                toks,
                &mut |p, x| {
                    head.predict(x, &mut scratch, &mut probs);
                    w.push(p, &probs)
                },
                &mut |n| progress.bases(n),
            )?;
            w.end()?;
            progress.record_done(toks.len());
            Ok(())
        })?;
        drop(smoothed);
        writer.into_output()
    }
}

enum Writer {
    Bed(Bed<Output>),
    Graph(BedGraph<Output>),
}

impl Writer {
    fn get_mut(&mut self) -> &mut dyn PositionWriter {
        match self {
            Writer::Bed(b) => b,
            Writer::Graph(g) => g,
        }
    }
    fn into_output(self) -> Result<Output> {
        match self {
            Writer::Bed(b) => b.into_inner(),
            Writer::Graph(g) => g.into_inner(),
        }
    }
}
