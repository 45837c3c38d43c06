//! Any bytes as the label inputs of `train`: the id,label table, BED intervals and GFF3
//! features.
#![no_main]
use dna_mamba::heads::labels::{parse_bed, parse_gff, LabelTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.lines().count();
    if let Ok(t) = LabelTable::parse(text, "fuzz.csv") {
        for (id, (label, line)) in &t.rows {
            assert!(!id.is_empty() && !label.is_empty() && *line >= 1 && *line <= lines, "{id} {label} {line}");
        }
    }
    for rename in [None, Some("x")] {
        if let Ok(v) = parse_bed(text, "fuzz.bed", rename) {
            assert!(v.iter().all(|iv| iv.start < iv.end && !iv.chrom.is_empty() && !iv.label.is_empty()), "{v:?}");
        }
    }
    for types in [vec![], vec!["CDS".to_string()]] {
        if let Ok(v) = parse_gff(text, "fuzz.gff3", &types, None) {
            assert!(v.iter().all(|iv| iv.start < iv.end && (types.is_empty() || iv.label == "CDS")), "{v:?}");
        }
    }
});
