//! Any bytes as the `--vcf` input of score-variants: the reader `score-variants` uses
//! (gzip sniffing, header, one record per line), the allele classification, and writing each
//! record back as the output does.
#![no_main]
use dna_mamba::io::vcf::{Bad, VcfReader};
use dna_mamba::variants::classify_alleles;
use libfuzzer_sys::fuzz_target;
use noodles::vcf;
use noodles::vcf::variant::io::Write as _;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = VcfReader::from_read("fuzz.vcf", Box::new(std::io::Cursor::new(data.to_vec()))) else {
        return;
    };
    let mut last = 0;
    while let Some(next) = reader.next_record() {
        let rec = match next {
            Ok(rec) => rec,
            Err(Bad::Line { line, error }) => {
                // a malformed line is named by its own number, after the lines before it
                assert!(line > last && error.to_string().contains(&format!("line {line}")), "{line} after {last}: {error}");
                last = line;
                continue;
            }
            Err(Bad::Stream(_)) => break,
        };
        assert!(rec.line > last, "record line {} after {last}", rec.line);
        last = rec.line;
        let r = &rec.record;
        let alts: &[String] = r.alternate_bases().as_ref();
        if let Ok((ref_col, cols)) = classify_alleles(r.reference_bases(), alts) {
            assert!(ref_col < 4);
            assert_eq!(cols.len(), alts.len());
            assert!(cols.iter().flatten().all(|&c| c < 4 && c != ref_col));
        }
        // every record read is written back as score-variants writes it, and reads back the same
        let mut w = vcf::io::Writer::new(Vec::new());
        w.write_variant_record(reader.header(), r).expect("a record read can be written");
        {
            let mut again = vcf::variant::RecordBuf::default();
            let written = w.get_ref().clone();
            vcf::io::Reader::new(&written[..]).read_record_buf(reader.header(), &mut again).expect("a written record reads back");
            assert_eq!(again.reference_sequence_name(), r.reference_sequence_name());
            assert_eq!(again.variant_start(), r.variant_start());
            // the writer reduces IUPAC codes in REF to a base, as the VCF spec says
            if r.reference_bases().bytes().all(|b| b"ACGTNacgtn".contains(&b)) {
                assert_eq!(again.reference_bases(), r.reference_bases());
            }
            assert_eq!(again.alternate_bases(), r.alternate_bases());
        }
    }
});
