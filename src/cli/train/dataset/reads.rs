//! Read level: labelled records, their labels from an id,label table or from `label=` in the
//! headers; held out: `--test` files or a stratified fraction of the records.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{bail, Result};
use serde_json::json;

use super::{Data, Rec, Split};
use crate::cli::train::TrainArgs;
use crate::heads::fit;
use crate::heads::labels::{header_label, LabelTable};
use crate::model::vocab::Vocab;

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

pub(super) fn assemble(a: &TrainArgs, vocab: &Vocab) -> Result<Data> {
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
