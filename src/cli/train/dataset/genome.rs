//! Position level: a genome with per-base labels painted from BED/GFF3 intervals, cut into
//! stretches that are each run through the model on their own, so that a held-out stretch
//! never overlaps, nor sees, training sequence; positions are subsampled to bound memory.

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Result};
use serde_json::json;

use super::{Data, Genome, Split, Stretch};
use crate::cli::train::TrainArgs;
use crate::cli::{for_each_record, Totals};
use crate::heads::fit::Rng;
use crate::heads::labels::{self, Interval};
use crate::model::vocab::Vocab;

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

pub(super) fn assemble(a: &TrainArgs, vocab: &Vocab) -> Result<Data> {
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
    let (names, labels) = paint_labels(a, &source, &intervals, &ids, &tokens)?;
    // one generator through splitting, budget and sampling, in this order, so a seed gives
    // the same positions
    let mut rng = Rng::new(a.seed);
    let (mut train_s, mut test_s) = cut_stretches(a, vocab, &ids, &tokens, n_train_seqs, &mut rng)?;
    let total: usize = train_s.iter().chain(&test_s).map(|s| s.end - s.start).sum();
    if total > a.max_bases {
        budget(&mut train_s, a.max_bases, 1.0 - a.test_fraction, &mut rng);
        budget(&mut test_s, a.max_bases, a.test_fraction, &mut rng);
    }
    sample_positions(&mut train_s, &tokens, vocab, a.max_positions, &mut rng);
    sample_positions(&mut test_s, &tokens, vocab, a.max_positions, &mut rng);
    let (names, labels) = keep_trained_labels(names, labels, &train_s, &mut test_s, a.common.quiet)?;
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

/// Label names (those of the intervals, then the background) and every sequence's per-base
/// label indices.
fn paint_labels(a: &TrainArgs, source: &str, intervals: &[Interval], ids: &[String], tokens: &[Vec<u8>]) -> Result<(Vec<String>, Vec<Vec<u8>>)> {
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
    for iv in intervals {
        by_chrom.entry(iv.chrom.as_str()).or_default().push(iv);
    }
    let matched = ids.iter().filter(|id| by_chrom.contains_key(id.as_str())).count();
    if matched == 0 {
        let mut chroms: Vec<&str> = by_chrom.keys().copied().collect();
        chroms.sort();
        bail!("{source}: no interval lies on a genome sequence (intervals name {}; the genome has {})", preview(&chroms), preview(ids));
    }
    let unmatched: Vec<&str> = by_chrom.keys().copied().filter(|c| !ids.iter().any(|i| i == c)).collect();
    if !unmatched.is_empty() && !a.common.quiet {
        eprintln!("warning: {source}: intervals on {} sequence(s) not in the genome are ignored ({})", unmatched.len(), preview(&unmatched));
    }
    let labels: Vec<Vec<u8>> = ids
        .iter()
        .zip(tokens)
        .map(|(id, t)| labels::paint(t.len(), by_chrom.get(id.as_str()).map(|v| &v[..]).unwrap_or(&[]), &index, bg))
        .collect();
    Ok((names, labels))
}

/// The genome in `--stretch` pieces, each training or held out: by `--test` file, by
/// `--test-chroms`, or at random. Sequences without intervals still count (all background), as
/// they would in use.
fn cut_stretches(a: &TrainArgs, vocab: &Vocab, ids: &[String], tokens: &[Vec<u8>], n_train_seqs: usize, rng: &mut Rng) -> Result<(Vec<Stretch>, Vec<Stretch>)> {
    let mut train_s = Vec::new();
    let mut test_s = Vec::new();
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
    Ok((train_s, test_s))
}

/// Keep random stretches of `v` up to `share` of `max_bases` (at least one), in genome order.
fn budget(v: &mut Vec<Stretch>, max_bases: usize, share: f64, rng: &mut Rng) {
    let cap = (max_bases as f64 * share).max(1.0) as usize;
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
}

/// Sample about `max_positions` positions over the stretches of `v`, ACGT bases only.
fn sample_positions(v: &mut [Stretch], tokens: &[Vec<u8>], vocab: &Vocab, max_positions: usize, rng: &mut Rng) {
    let bases: usize = v.iter().map(|s| s.end - s.start).sum();
    let rate = (max_positions as f64 / bases.max(1) as f64).min(1.0);
    for s in v.iter_mut() {
        let t = &tokens[s.chrom][s.start..s.end];
        s.at = (0..t.len()).filter(|&p| vocab.nucleotide(t[p]).is_some() && (rate >= 1.0 || rng.unit() < rate)).collect();
    }
}

/// Only the labels present in training positions, renumbered: a head cannot learn the others,
/// so held-out positions of those are dropped rather than scored as certain errors.
fn keep_trained_labels(names: Vec<String>, labels: Vec<Vec<u8>>, train_s: &[Stretch], test_s: &mut [Stretch], quiet: bool) -> Result<(Vec<String>, Vec<Vec<u8>>)> {
    let mut seen = vec![0usize; names.len()];
    for s in train_s {
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
    for s in test_s {
        let before = s.at.len();
        s.at.retain(|&p| labels[s.chrom][s.start + p] != u8::MAX);
        dropped += before - s.at.len();
    }
    if dropped > 0 && !quiet {
        eprintln!("warning: {dropped} held-out positions carry labels absent from the training positions and are not scored");
    }
    Ok((names, labels))
}

fn preview<S: AsRef<str>>(v: &[S]) -> String {
    let mut s: Vec<&str> = v.iter().take(5).map(|x| x.as_ref()).collect();
    if v.len() > 5 {
        s.push("...");
    }
    s.join(", ")
}
