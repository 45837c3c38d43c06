//! Region strings and BED text against a small index.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn lengths(n: &str) -> Option<usize> {
    match n {
        "chr1" => Some(248_956_422),
        "chrM" => Some(16_569),
        "a:b" => Some(10),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(span) = dna_mamba::io::regions::parse_region(&text, &lengths) {
        let len = lengths(&span.name).expect("a parsed region names a known sequence");
        assert!(span.start < span.end && span.end <= len, "{span:?}");
    }
    if let Ok(spans) = dna_mamba::io::regions::parse_bed(data, "fuzz.bed", &lengths) {
        for s in spans {
            assert!(s.start < s.end && s.end <= lengths(&s.name).unwrap(), "{s:?}");
        }
    }
});
