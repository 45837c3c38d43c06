//! `dna-mamba score-variants`: zero-shot scores for the SNVs of a VCF against an indexed FASTA,
//! streamed in input order as VCF (INFO fields added) or TSV.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use noodles::vcf;
use noodles::vcf::header::record::value::map::info::{Number, Type};
use noodles::vcf::header::record::value::{map::Info, Map};
use noodles::vcf::variant::io::Write as _;
use noodles::vcf::variant::record_buf::info::field::{value::Array, Value};

use super::{load_model, on_backend, Common, OnBackend};
use crate::backend::Backend;
use crate::embed::{Embedder, Feature, Strand};
use crate::output::Output;
use crate::io::regions::IndexedFasta;
use crate::model::Model;
use crate::tiling::{self, Tile};
use crate::variants::{base_index, tokens, Scorer, Window};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantFormat {
    /// The input VCF with DNAM_* INFO fields added.
    Vcf,
    /// chrom,pos,ref,alt,status,llr,mllr,cos,l2 (one row per alternate allele).
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
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// VCF (plain or bgzf .gz) with the variants.
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
    let model = load_model(&a.common)?;
    struct Job<'a>(&'a ScoreArgs, Arc<Model>);
    impl OnBackend for Job<'_> {
        fn run<B: Backend>(self, backend: B) -> Result<()> {
            score_on(backend, self.1, self.0)
        }
    }
    on_backend(&a.common, &model, a.chunk, Job(&a, model.clone()))
}

/// The reference pass of one tile, kept while variants fall inside it.
struct TileCache {
    chrom: String,
    tile: Tile,
    /// strand-averaged A,C,G,T log-probabilities of the tile's positions
    lp: Vec<f32>,
}

fn score_on<B: Backend>(backend: B, model: Arc<Model>, a: &ScoreArgs) -> Result<()> {
    let started = Instant::now();
    let mut reference = IndexedFasta::open(&a.fasta)?;
    let emb = Embedder::new(backend, model.clone(), Strand::Both, Feature::Logits, a.context.max(tiling::MIN_CONTEXT), 0)?;
    let mut scorer = Scorer::new(emb, a.score_context.max(1), a.embed_window.max(1));
    let want = |s: Score| a.scores.contains(&s);

    let vcf_name = a.vcf.display().to_string();
    let mut vr = vcf::io::reader::Builder::default()
        .build_from_path(&a.vcf)
        .with_context(|| vcf_name.clone())?;
    let mut header = vr.read_header().with_context(|| format!("{vcf_name}: header"))?;
    let infos: [(&str, Number, Type, &str); 5] = [
        ("DNAM_LLR", Number::AlternateBases, Type::Float, "dna-mamba: unmasked log P(alt) - log P(ref), strand-averaged"),
        ("DNAM_MLLR", Number::AlternateBases, Type::Float, "dna-mamba: masked-position log P(alt) - log P(ref), strand-averaged"),
        ("DNAM_COS", Number::AlternateBases, Type::Float, "dna-mamba: cosine similarity of mean strand-averaged embeddings, ref vs alt window"),
        ("DNAM_L2", Number::AlternateBases, Type::Float, "dna-mamba: L2 distance of mean strand-averaged embeddings, ref vs alt window"),
        ("DNAM_SKIP", Number::Count(1), Type::String, "dna-mamba: why the variant was not scored"),
    ];
    for (id, number, ty, desc) in infos {
        header.infos_mut().insert(id.to_string(), Map::<Info>::new(number, ty, desc));
    }
    let mut out = Output::open(a.out.as_deref(), &[a.vcf.display().to_string(), a.fasta.display().to_string()])?;
    let mut vw = vcf::io::Writer::new(Vec::new());
    match a.format {
        VariantFormat::Vcf => {
            vw.write_header(&header)?;
        }
        VariantFormat::Tsv => writeln!(out, "chrom\tpos\tref\talt\tstatus\tllr\tmllr\tcos\tl2")?,
    }
    out.write_all(vw.get_ref())?;
    vw.get_mut().clear();

    let mut cache: Option<TileCache> = None;
    let (mut n_in, mut n_scored, mut n_skipped) = (0usize, 0usize, 0usize);
    let mut batch: Vec<Pending> = Vec::new();
    let mut batch_bases = 0usize;
    let mut eof = false;
    while !eof {
        let mut record = vcf::variant::RecordBuf::default();
        // a VCF error ends the run, after the records read before it are written
        let read = vr.read_record_buf(&header, &mut record).with_context(|| format!("{vcf_name}: record {}", n_in + 1));
        eof = !matches!(read, Ok(n) if n > 0);
        if !eof {
            n_in += 1;
            let mut p = Pending { outcome: Ok(vec![]), window: None, record };
            p.outcome = prepare(&mut p, &mut reference, &mut scorer, &mut cache, a, n_in);
            // window bases the batch will run: the reference window (masked) and one per allele
            batch_bases += p.window.as_ref().map_or(0, |w| w.tokens.len() * (2 + w.alt_cols.len()));
            batch.push(p);
        }
        if batch.len() >= BATCH || batch_bases >= BATCH_BASES || (eof && !batch.is_empty()) {
            score_windows(&mut batch, &mut scorer, want(Score::Mllr), want(Score::Emb))?;
            for p in batch.drain(..) {
                if p.outcome.is_ok() {
                    n_scored += 1;
                } else {
                    n_skipped += 1;
                }
                write_record(p, a, &header, &mut vw, &mut out, &vcf_name)?;
            }
            batch_bases = 0;
        }
        read?;
    }
    out.finish()?;
    if !a.common.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "dna-mamba: {n_in} variants in, {n_scored} scored, {n_skipped} skipped, in {secs:.2} s ({:.1} variants/s)",
            n_in as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

/// Variants whose per-variant windows run together (packed on backends that pack), up to
/// BATCH_BASES bases of windows (which bounds host memory for long --score-context).
const BATCH: usize = 1024;
const BATCH_BASES: usize = 4 << 20;

/// One VCF record on its way through: its scores so far (one row of llr, mllr, cos, l2 per
/// alternate allele) or why it is not scored, and the window the per-variant scores need.
struct Pending {
    record: vcf::variant::RecordBuf,
    outcome: Result<Vec<[Option<f32>; 4]>>,
    window: Option<Window>,
}

/// Check one record against the reference, compute its llr from the cached tile pass and cut
/// its window for the batched scores.
fn prepare<B: Backend>(
    p: &mut Pending,
    reference: &mut IndexedFasta,
    scorer: &mut Scorer<B>,
    cache: &mut Option<TileCache>,
    a: &ScoreArgs,
    n_in: usize,
) -> Result<Vec<[Option<f32>; 4]>> {
    let record = &p.record;
    let chrom = record.reference_sequence_name().to_string();
    let pos1 = record.variant_start().map(usize::from).ok_or_else(|| anyhow!("no position (POS 0, record {n_in})"))?;
    let ref_b = record.reference_bases();
    let alts: &[String] = record.alternate_bases().as_ref();
    let ref_col = match (ref_b.len(), ref_b.as_bytes().first().and_then(|&b| base_index(b))) {
        (1, Some(c)) => c,
        _ => bail!("not an SNV (REF {ref_b})"),
    };
    let alt_cols: Vec<usize> = alts
        .iter()
        .map(|x| if x.len() == 1 { base_index(x.as_bytes()[0]) } else { None })
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("not an SNV (ALT {})", alts.join(",")))?;
    if alt_cols.is_empty() {
        bail!("no alternate allele");
    }
    let len = reference.length(&chrom).ok_or_else(|| anyhow!("sequence {chrom} is not in {}", reference.name))?;
    if pos1 > len {
        bail!("position {pos1} is past the end of {chrom} ({len} bases)");
    }
    let p0 = pos1 - 1;
    let fasta_base = reference.fetch(&chrom, p0, p0 + 1)?[0];
    if base_index(fasta_base) != Some(ref_col) {
        bail!("REF {ref_b} disagrees with the FASTA ({})", fasta_base as char);
    }
    let mut scores = vec![[None; 4]; alt_cols.len()];
    if a.scores.contains(&Score::Llr) {
        let hit = cache.as_ref().is_some_and(|c| c.chrom == chrom && (c.tile.keep_start..c.tile.keep_end).contains(&p0));
        if !hit {
            let tiles = tiling::plan(len, a.context.max(tiling::MIN_CONTEXT), a.context / 4);
            let tile = *tiles.iter().find(|t| (t.keep_start..t.keep_end).contains(&p0)).expect("tiles cover the sequence");
            let lp = scorer.log_probs(&tokens(&reference.fetch(&chrom, tile.start, tile.end)?))?;
            *cache = Some(TileCache { chrom: chrom.clone(), tile, lp });
        }
        let c = cache.as_ref().expect("filled above");
        let row = &c.lp[(p0 - c.tile.start) * 4..][..4];
        for (s, &alt) in scores.iter_mut().zip(&alt_cols) {
            s[0] = Some(row[alt] - row[ref_col]);
        }
    }
    if a.scores.contains(&Score::Mllr) || a.scores.contains(&Score::Emb) {
        let (lo, hi) = scorer.window(p0, len);
        p.window = Some(Window { tokens: tokens(&reference.fetch(&chrom, lo, hi)?), center: p0 - lo, ref_col, alt_cols });
    }
    Ok(scores)
}

/// Fill in mllr and the embedding distances of a batch's scored records, all windows at once.
fn score_windows<B: Backend>(batch: &mut [Pending], scorer: &mut Scorer<B>, mllr: bool, emb: bool) -> Result<()> {
    let idx: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].outcome.is_ok() && batch[i].window.is_some()).collect();
    if idx.is_empty() {
        return Ok(());
    }
    let windows: Vec<Window> = idx.iter().map(|&i| batch[i].window.take().expect("filtered")).collect();
    if mllr {
        for (&i, v) in idx.iter().zip(scorer.masked_llr(&windows)?) {
            let scores = batch[i].outcome.as_mut().expect("filtered");
            scores.iter_mut().zip(v).for_each(|(s, v)| s[1] = Some(v));
        }
    }
    if emb {
        for (&i, v) in idx.iter().zip(scorer.embedding_distance(&windows)?) {
            let scores = batch[i].outcome.as_mut().expect("filtered");
            scores.iter_mut().zip(v).for_each(|(s, (cos, l2))| {
                s[2] = Some(cos);
                s[3] = Some(l2);
            });
        }
    }
    Ok(())
}

/// Write one record (VCF with INFO fields, or TSV rows) and report a skip on stderr.
fn write_record(mut p: Pending, a: &ScoreArgs, header: &vcf::Header, vw: &mut vcf::io::Writer<Vec<u8>>, out: &mut Output, vcf_name: &str) -> Result<()> {
    let record = &mut p.record;
    let chrom = record.reference_sequence_name().to_string();
    let pos1 = record.variant_start().map(usize::from).map(|p| p.to_string()).unwrap_or_else(|| ".".into());
    let ref_b = record.reference_bases().to_string();
    let alts: Vec<String> = record.alternate_bases().as_ref().to_vec();
    let status = match &p.outcome {
        Ok(_) => "scored".to_string(),
        Err(e) => {
            if !a.common.quiet {
                eprintln!("skipped: {vcf_name}: {chrom}:{pos1} {ref_b}>{}: {e:#}", alts.join(","));
            }
            format!("{e:#}")
        }
    };
    match a.format {
        VariantFormat::Vcf => {
            let info = record.info_mut();
            match &p.outcome {
                Ok(scores) => {
                    for (k, key) in ["DNAM_LLR", "DNAM_MLLR", "DNAM_COS", "DNAM_L2"].iter().enumerate() {
                        if scores[0][k].is_some() {
                            let v: Vec<Option<f32>> = scores.iter().map(|s| s[k]).collect();
                            info.insert(key.to_string(), Some(Value::Array(Array::Float(v))));
                        }
                    }
                }
                Err(_) => {
                    // INFO strings cannot hold spaces, commas, semicolons or '='
                    let code: String = status.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                    info.insert("DNAM_SKIP".into(), Some(Value::String(code)));
                }
            }
            vw.write_variant_record(header, record)?;
            out.write_all(vw.get_ref())?;
            vw.get_mut().clear();
        }
        VariantFormat::Tsv => {
            let f = |v: Option<f32>| v.map(|x| x.to_string()).unwrap_or_else(|| "NA".into());
            let row_alts = if alts.is_empty() { vec![".".to_string()] } else { alts };
            for (i, alt) in row_alts.iter().enumerate() {
                let s = p.outcome.as_ref().ok().and_then(|v| v.get(i)).copied().unwrap_or([None; 4]);
                writeln!(out, "{chrom}\t{pos1}\t{ref_b}\t{alt}\t{status}\t{}\t{}\t{}\t{}", f(s[0]), f(s[1]), f(s[2]), f(s[3]))?;
            }
        }
    }
    Ok(())
}
