//! Variant scores: the input VCF with `DNAM_*` INFO fields added, or one TSV row per
//! alternate allele (`chrom,pos,id,ref,alt,status,<scores>,reason`).

use std::io::Write;

use anyhow::Result;
use noodles::vcf;
use noodles::vcf::header::record::value::map::info::{Number, Type};
use noodles::vcf::header::record::value::{map::Info, Map};
use noodles::vcf::variant::io::Write as _;
use noodles::vcf::variant::record_buf::info::field::{value::Array, Value};

use super::{non_finite, Output};
use crate::variants::{Skip, SKIP_CODES};

/// The scores of one allele, in the order of `SCORES` (those not asked for are `None`).
pub type Scores = [Option<f32>; 5];

/// Each score's INFO key, TSV column and description.
pub const SCORES: [(&str, &str, &str); 5] = [
    ("DNAM_LLR", "llr", "dna-mamba: unmasked log P(alt) - log P(ref), strand-averaged"),
    ("DNAM_MLLR", "mllr", "dna-mamba: masked-position log P(alt) - log P(ref), strand-averaged"),
    ("DNAM_COS", "cos", "dna-mamba: cosine similarity of mean strand-averaged embeddings, ref vs alt window"),
    ("DNAM_L2", "l2", "dna-mamba: L2 distance of mean strand-averaged embeddings, ref vs alt window"),
    ("DNAM_PLANTCAD", "plantcad", "dna-mamba: PlantCaduceus zero-shot score, log(p_alt/p_ref) at the masked variant of a 512-base window (index 255), forward strand"),
];

pub struct VariantWriter {
    out: Output,
    tsv: bool,
    header: vcf::Header,
    /// Formats one record at a time (noodles' writer), then it goes to `out`.
    fmt: vcf::io::Writer<Vec<u8>>,
}

impl VariantWriter {
    /// Writes the header: the input's with the `DNAM_*` INFO fields declared, or the TSV's.
    pub fn new(mut out: Output, tsv: bool, mut header: vcf::Header) -> Result<Self> {
        let codes: Vec<String> = SKIP_CODES.iter().map(|(c, why)| format!("{c} = {why}")).collect();
        let skip = format!("dna-mamba: why each ALT allele was not scored ('.' where it was): {}", codes.join("; "));
        for (key, _, desc) in SCORES {
            header.infos_mut().insert(key.to_string(), Map::<Info>::new(Number::AlternateBases, Type::Float, desc));
        }
        header.infos_mut().insert("DNAM_SKIP".to_string(), Map::<Info>::new(Number::Unknown, Type::String, skip));
        let mut fmt = vcf::io::Writer::new(Vec::new());
        if tsv {
            let cols: Vec<&str> = SCORES.iter().map(|s| s.1).collect();
            writeln!(out, "chrom\tpos\tid\tref\talt\tstatus\t{}\treason", cols.join("\t"))?;
        } else {
            fmt.write_header(&header)?;
            out.write_all(fmt.get_ref())?;
            fmt.get_mut().clear();
        }
        Ok(VariantWriter { out, tsv, header, fmt })
    }

    /// One record, with one outcome per ALT allele (one for a record without ALT).
    pub fn record(&mut self, record: &mut vcf::variant::RecordBuf, per_alt: &[std::result::Result<Scores, &Skip>]) -> Result<()> {
        if per_alt.iter().flatten().flat_map(|s| s.iter().flatten()).any(|v| !v.is_finite()) {
            return Err(non_finite());
        }
        let alts: Vec<String> = record.alternate_bases().as_ref().to_vec();
        if !self.tsv {
            let info = record.info_mut();
            for (k, (key, _, _)) in SCORES.iter().enumerate() {
                let v: Vec<Option<f32>> = per_alt.iter().map(|x| x.ok().and_then(|s| s[k])).collect();
                if !alts.is_empty() && v.iter().any(Option::is_some) {
                    info.insert(key.to_string(), Some(Value::Array(Array::Float(v))));
                }
            }
            if per_alt.iter().any(|x| x.is_err()) {
                let codes = per_alt.iter().map(|x| x.err().map(|s| s.code().to_string())).collect();
                info.insert("DNAM_SKIP".into(), Some(Value::Array(Array::String(codes))));
            }
            self.fmt.write_variant_record(&self.header, record)?;
            self.out.write_all(self.fmt.get_ref())?;
            self.fmt.get_mut().clear();
            return Ok(());
        }
        let chrom = record.reference_sequence_name().to_string();
        let pos1 = record.variant_start().map(usize::from).map(|p| p.to_string()).unwrap_or_else(|| ".".into());
        let ref_b = record.reference_bases().to_string();
        let ids: Vec<&str> = record.ids().as_ref().iter().map(String::as_str).collect();
        let id = if ids.is_empty() { ".".to_string() } else { ids.join(";") };
        let row_alts = if alts.is_empty() { vec![".".to_string()] } else { alts };
        for (alt, x) in row_alts.iter().zip(per_alt) {
            let (status, s, reason) = match x {
                Ok(s) => ("scored", *s, ".".to_string()),
                Err(skip) => (skip.code(), [None; 5], skip.to_string()),
            };
            let vals: Vec<String> = s.iter().map(|v| v.map(|x| x.to_string()).unwrap_or_else(|| "NA".into())).collect();
            writeln!(self.out, "{chrom}\t{pos1}\t{id}\t{ref_b}\t{alt}\t{status}\t{}\t{reason}", vals.join("\t"))?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }

    pub fn finish(self) -> Result<()> {
        self.out.finish()
    }
}
