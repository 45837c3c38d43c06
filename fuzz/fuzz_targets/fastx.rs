//! Any bytes through the input path: sniffing, decompression, parsing, tokenizing, and reading
//! on after a record the reader can pass over.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = dna_mamba::io::fastx::Reader::from_read("fuzz", std::io::Cursor::new(data.to_vec())) else {
        return;
    };
    let mut tokens = Vec::new();
    while let Some(rec) = r.next_record() {
        match rec {
            Ok(rec) => {
                dna_mamba::tokenizer::encode_into(&rec.seq, &mut tokens);
                assert_eq!(tokens.len(), rec.seq.len());
            }
            Err(e) if e.skippable => {}
            Err(_) => {
                // a reader that cannot find the next record has stopped
                assert!(r.next_record().is_none());
                break;
            }
        }
    }
});
