//! `dna-mamba score-variants`: zero-shot scores for the SNVs of a VCF against an indexed FASTA,
//! streamed in input order as VCF (INFO fields added) or TSV.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use noodles::vcf;

use super::{load_model, select_backend, with_backend, Common};
use crate::backend::Backend;
use crate::embed::{Embedder, Feature, Strand};
use crate::output::vcf::{Scores, VariantWriter};
use crate::output::Output;
use crate::io::regions::IndexedFasta;
use crate::io::vcf::{Bad, VcfReader};
use crate::model::Model;
use crate::tiling::{self, Tile};
use crate::variants::{base_index, classify_alleles, Scorer, Skip, Window, PLANTCAD_CENTER};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantFormat {
    /// The input VCF with DNAM_* INFO fields added.
    Vcf,
    /// chrom,pos,id,ref,alt,status,llr,mllr,cos,l2,plantcad,reason (one row per alternate allele).
    Tsv,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    /// Unmasked log P(alt) - log P(ref) from the reference pass.
    Llr,
    /// The same with the variant masked, one window per variant.
    Mllr,
    /// Cosine similarity and L2 distance of mean embeddings around the variant.
    Emb,
    /// PlantCaduceus's zero-shot score: 512-base window, variant masked at index 255, forward
    /// strand, log(p_alt / p_ref).
    Plantcad,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// VCF with the variants (plain, gzip or bgzf; `-` = stdin).
    #[arg(long)]
    pub vcf: PathBuf,
    /// Reference FASTA with a .fai index (bgzf .gz also needs .gzi).
    #[arg(long)]
    pub fasta: PathBuf,
    #[command(flatten)]
    pub common: Common,
    /// Output file (`-` = stdout; .gz is compressed).
    #[arg(short = 'o', long = "out", value_name = "PATH")]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "vcf")]
    pub format: VariantFormat,
    /// Scores to compute (comma-separated). mllr and emb cost passes per variant.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "llr,mllr,emb")]
    pub scores: Vec<Score>,
    /// Context of the reference pass for llr (tiles over each chromosome) [default: 8192].
    #[arg(long, default_value_t = 8192)]
    pub context: usize,
    /// Bases around each variant for mllr and emb (a centred window of 2·(N/2)+1 bases).
    #[arg(long, default_value_t = 512)]
    pub score_context: usize,
    /// Bases around the variant averaged for the embedding distance.
    #[arg(long, default_value_t = 128)]
    pub embed_window: usize,
    #[arg(long, default_value_t = crate::backend::cpu::DEFAULT_CHUNK, hide = true)]
    pub chunk: usize,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    // refused before the model loads, with the words `embed` uses for its --context
    for (flag, v, min) in [("--context", a.context, tiling::MIN_CONTEXT), ("--score-context", a.score_context, tiling::MIN_CONTEXT), ("--embed-window", a.embed_window, 1)] {
        if v < min {
            bail!("{flag} must be at least {min}");
        }
    }
    let model = load_model(&a.common)?;
    with_backend!(select_backend(&a.common, &model, a.chunk)?, b => score_on(b, model.clone(), &a))
}

/// The reference pass of one tile, kept while variants fall inside it.
struct TileCache {
    chrom: String,
    tile: Tile,
    /// strand-averaged A,C,G,T log-probabilities of the tile's positions
    lp: Vec<f32>,
}

/// Records in, and what became of them.
#[derive(Default)]
struct Counts {
    records: usize,
    /// records with at least one allele scored
    scored: usize,
    /// records with no allele scored
    skipped: usize,
    /// alleles not scored, in records of either kind
    alleles_skipped: usize,
    /// malformed lines passed over with --skip-bad
    bad_lines: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} records: {} scored, {} skipped ({} alleles not scored)", self.records, self.scored, self.skipped, self.alleles_skipped)?;
        if self.bad_lines > 0 {
            write!(f, ", {} malformed lines skipped", self.bad_lines)?;
        }
        Ok(())
    }
}

fn score_on<B: Backend>(backend: B, model: Arc<Model>, a: &ScoreArgs) -> Result<()> {
    let started = Instant::now();
    let mut reference = IndexedFasta::open(&a.fasta)?;
    let emb = Embedder::new(backend, model.clone(), Strand::Both, Feature::Logits, a.context, 0)?;
    let mut scorer = Scorer::new(emb, a.score_context, a.embed_window);
    let want = |s: Score| a.scores.contains(&s);

    let mut vr = VcfReader::open(&a.vcf.to_string_lossy())?;
    let vcf_name = vr.name().to_string();
    let out = Output::open(a.out.as_deref(), &[a.vcf.display().to_string(), a.fasta.display().to_string()])?;
    let mut out = VariantWriter::new(out, a.format == VariantFormat::Tsv, vr.header().clone())?;

    let mut cache: Option<TileCache> = None;
    let mut n = Counts::default();
    let mut batch: Vec<Pending> = Vec::new();
    let mut batch_bases = 0usize;
    loop {
        // a VCF error ends the run, after the records read before it are written
        let (eof, stop) = match vr.next_record() {
            None => (true, None),
            Some(Ok(rec)) => {
                n.records += 1;
                let mut p = Pending { line: rec.line, record: rec.record, outcome: Err(Skip::NoAlt), window: None, plantcad: None, scored: vec![] };
                p.outcome = prepare(&mut p, &mut reference, &mut scorer, &mut cache, a)?;
                // window bases the batch will run: the reference window (masked) and one per allele
                batch_bases += p.window.as_ref().map_or(0, |w| w.tokens.len() * (2 + w.alt_cols.len()));
                batch_bases += p.plantcad.as_ref().map_or(0, |w| w.tokens.len());
                batch.push(p);
                (false, None)
            }
            Some(Err(Bad::Line { error, .. })) if a.common.skip_bad => {
                eprintln!("skipped: {error:#}");
                n.bad_lines += 1;
                (false, None)
            }
            Some(Err(Bad::Line { error, .. } | Bad::Stream(error))) => (true, Some(error)),
        };
        if batch.len() >= BATCH || batch_bases >= BATCH_BASES || (eof && !batch.is_empty()) {
            score_windows(&mut batch, &mut scorer, want(Score::Mllr), want(Score::Emb))?;
            score_plantcad(&mut batch, &mut scorer)?;
            for p in batch.drain(..) {
                match &p.outcome {
                    Ok(alleles) => {
                        let bad = alleles.iter().filter(|x| x.is_err()).count();
                        n.alleles_skipped += bad;
                        if bad < alleles.len() { n.scored += 1 } else { n.skipped += 1 }
                    }
                    Err(_) => {
                        n.skipped += 1;
                        n.alleles_skipped += p.record.alternate_bases().as_ref().len();
                    }
                }
                write_record(p, a, &mut out, &vcf_name)?;
            }
            batch_bases = 0;
        }
        if let Some(e) = stop {
            // what was written stays written (stdout is a stream); the VCF error is the one reported
            let _ = out.flush();
            return Err(anyhow!("{e:#} (stopped; before it {n})"));
        }
        if eof {
            break;
        }
    }
    out.finish()?;
    if !a.common.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!("dna-mamba: {n}, in {secs:.2} s ({:.1} records/s)", n.records as f64 / secs.max(1e-9));
    }
    Ok(())
}

/// Variants whose per-variant windows run together (packed on backends that pack), up to
/// BATCH_BASES bases of windows (which bounds host memory for long --score-context).
const BATCH: usize = 1024;
const BATCH_BASES: usize = 4 << 20;


/// One VCF record on its way through: per alternate allele its scores so far or why it is
/// not scored (`Err`: nothing of the record is scored), and the window the per-variant scores
/// need for the alleles in `scored`.
struct Pending {
    line: usize,
    record: vcf::variant::RecordBuf,
    outcome: std::result::Result<Vec<std::result::Result<Scores, Skip>>, Skip>,
    window: Option<Window>,
    /// The PlantCaduceus window, for the same alleles.
    plantcad: Option<Window>,
    /// ALT indices of `window.alt_cols`
    scored: Vec<usize>,
}

/// Check one record against the reference, compute its llr from the cached tile pass and cut
/// its window for the batched scores. The outer error is a failure of the run (reading the
/// FASTA, the model), the inner one why the record is skipped.
fn prepare<B: Backend>(
    p: &mut Pending,
    reference: &mut IndexedFasta,
    scorer: &mut Scorer<B>,
    cache: &mut Option<TileCache>,
    a: &ScoreArgs,
) -> Result<std::result::Result<Vec<std::result::Result<Scores, Skip>>, Skip>> {
    let record = &p.record;
    let chrom = record.reference_sequence_name().to_string();
    let Some(pos1) = record.variant_start().map(usize::from) else { return Ok(Err(Skip::NoPosition)) };
    let ref_b = record.reference_bases();
    let alts: &[String] = record.alternate_bases().as_ref();
    let (ref_col, cols) = match classify_alleles(ref_b, alts) {
        Ok(x) => x,
        Err(skip) => return Ok(Err(skip)),
    };
    p.scored = (0..cols.len()).filter(|&i| cols[i].is_ok()).collect();
    if p.scored.is_empty() {
        return Ok(Ok(cols.into_iter().map(|c| c.map(|_| [None; 5])).collect()));
    }
    let Some(len) = reference.length(&chrom) else { return Ok(Err(Skip::UnknownSequence { chrom, fasta: reference.name.clone() })) };
    if pos1 > len {
        return Ok(Err(Skip::PastEnd { pos: pos1, chrom, len }));
    }
    let p0 = pos1 - 1;
    let fasta_base = reference.fetch(&chrom, p0, p0 + 1)?[0];
    if base_index(fasta_base) != Some(ref_col) {
        return Ok(Err(Skip::RefMismatch { vcf: ref_b.to_string(), fasta: fasta_base as char }));
    }
    let mut scores: Vec<std::result::Result<Scores, Skip>> = cols.iter().map(|c| c.clone().map(|_| [None; 5])).collect();
    let alt_cols: Vec<usize> = p.scored.iter().map(|&i| *cols[i].as_ref().expect("scored")).collect();
    if a.scores.contains(&Score::Llr) {
        let hit = cache.as_ref().is_some_and(|c| c.chrom == chrom && (c.tile.keep_start..c.tile.keep_end).contains(&p0));
        if !hit {
            let tiles = tiling::plan(len, a.context, a.context / 4);
            let tile = *tiles.iter().find(|t| (t.keep_start..t.keep_end).contains(&p0)).expect("tiles cover the sequence");
            let lp = scorer.log_probs(&scorer.tokens(&reference.fetch(&chrom, tile.start, tile.end)?))?;
            *cache = Some(TileCache { chrom: chrom.clone(), tile, lp });
        }
        let c = cache.as_ref().expect("filled above");
        let row = &c.lp[(p0 - c.tile.start) * 4..][..4];
        for (&i, &alt) in p.scored.iter().zip(&alt_cols) {
            scores[i].as_mut().expect("scored")[0] = Some(row[alt] - row[ref_col]);
        }
    }
    if a.scores.contains(&Score::Mllr) || a.scores.contains(&Score::Emb) {
        let (lo, hi) = scorer.window(p0, len);
        p.window = Some(Window { tokens: scorer.tokens(&reference.fetch(&chrom, lo, hi)?), center: p0 - lo, ref_col, alt_cols: alt_cols.clone() });
    }
    if a.scores.contains(&Score::Plantcad) {
        let tokens = scorer.plantcad_window(p0, len, &mut |lo, hi| reference.fetch(&chrom, lo, hi))?;
        p.plantcad = Some(Window { tokens, center: PLANTCAD_CENTER, ref_col, alt_cols });
    }
    Ok(Ok(scores))
}

/// Fill in the PlantCaduceus scores of a batch's scored records, all windows at once.
fn score_plantcad<B: Backend>(batch: &mut [Pending], scorer: &mut Scorer<B>) -> Result<()> {
    let idx: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].outcome.is_ok() && batch[i].plantcad.is_some()).collect();
    if idx.is_empty() {
        return Ok(());
    }
    let windows: Vec<Window> = idx.iter().map(|&i| batch[i].plantcad.take().expect("filtered")).collect();
    for (&i, v) in idx.iter().zip(scorer.plantcad(&windows)?) {
        let p = &mut batch[i];
        for (j, v) in v.into_iter().enumerate() {
            let alt = p.scored[j];
            p.outcome.as_mut().expect("filtered")[alt].as_mut().expect("scored")[4] = Some(v);
        }
    }
    Ok(())
}

/// Fill in mllr and the embedding distances of a batch's scored records, all windows at once.
fn score_windows<B: Backend>(batch: &mut [Pending], scorer: &mut Scorer<B>, mllr: bool, emb: bool) -> Result<()> {
    let idx: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].outcome.is_ok() && batch[i].window.is_some()).collect();
    if idx.is_empty() {
        return Ok(());
    }
    let windows: Vec<Window> = idx.iter().map(|&i| batch[i].window.take().expect("filtered")).collect();
    // column k of allele j of window i goes to ALT scored[j] of its record
    let mut put = |i: usize, j: usize, k: usize, v: f32| {
        let p = &mut batch[i];
        let alt = p.scored[j];
        p.outcome.as_mut().expect("filtered")[alt].as_mut().expect("scored")[k] = Some(v);
    };
    if mllr {
        for (&i, v) in idx.iter().zip(scorer.masked_llr(&windows)?) {
            v.into_iter().enumerate().for_each(|(j, v)| put(i, j, 1, v));
        }
    }
    if emb {
        for (&i, v) in idx.iter().zip(scorer.embedding_distance(&windows)?) {
            v.into_iter().enumerate().for_each(|(j, (cos, l2))| {
                put(i, j, 2, cos);
                put(i, j, 3, l2);
            });
        }
    }
    Ok(())
}

/// Write one record (VCF with INFO fields, or TSV rows) and report its skipped alleles on
/// stderr.
fn write_record(mut p: Pending, a: &ScoreArgs, out: &mut VariantWriter, vcf_name: &str) -> Result<()> {
    let record = &mut p.record;
    let alts: Vec<String> = record.alternate_bases().as_ref().to_vec();
    // one outcome per ALT (one row for a record without ALT)
    let n_rows = alts.len().max(1);
    let per_alt: Vec<std::result::Result<Scores, &Skip>> = match &p.outcome {
        Ok(v) => v.iter().map(|x| x.as_ref().map(|s| *s)).collect(),
        Err(skip) => vec![Err(skip); n_rows],
    };
    if !a.common.quiet {
        let chrom = record.reference_sequence_name().to_string();
        let pos1 = record.variant_start().map(usize::from).map(|p| p.to_string()).unwrap_or_else(|| ".".into());
        let at = format!("skipped: {vcf_name}: line {}: {chrom}:{pos1} {}>", p.line, record.reference_bases());
        match &p.outcome {
            Err(skip) => eprintln!("{at}{}: {skip}", if alts.is_empty() { ".".to_string() } else { alts.join(",") }),
            Ok(v) => {
                for (alt, x) in alts.iter().zip(v) {
                    if let Err(skip) = x {
                        eprintln!("{at}{alt}: {skip}");
                    }
                }
            }
        }
    }
    out.record(record, &per_alt).with_context(|| format!("{vcf_name}: line {}", p.line))
}
