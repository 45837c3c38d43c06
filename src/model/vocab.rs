//! The token ids a model reads: the folder's `tokenizer.json` (Hugging Face tokenizers
//! format) when it has one, else the Caduceus ids (model-format.md §1.3).
//!
//! Only single-character vocabularies are DNA tokenizers we can reproduce byte by byte:
//! `WordLevel`, or `BPE` without merges (the same thing), whose tokens are single ASCII
//! characters besides the bracketed special tokens, with no normalizer or `Lowercase` (the
//! Unicode normalizations are the identity on ASCII and are accepted). Anything else is
//! refused rather than approximated.

use std::path::Path;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    /// Byte -> id, the normalizer applied.
    table: [u8; 256],
    pub unk: u8,
    pub mask: Option<u8>,
    pub pad: Option<u8>,
    /// Ids of A, C, G, T (column order of log-probabilities and k-mers).
    pub acgt: [u8; 4],
    /// Every (id, token), ascending by id, for `info`.
    pub tokens: Vec<(u8, String)>,
    /// Where the ids come from, for `info` and messages.
    pub source: String,
}

/// The Caduceus ids: [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6 A=7 C=8 G=9
/// T=10 N=11, input upper-cased first.
pub fn caduceus() -> Vocab {
    let names = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N"];
    use crate::tokenizer::{A, ACGT, C, G, N, T, UNK};
    let mut table = [UNK; 256];
    for (id, c) in [(A, b'A'), (C, b'C'), (G, b'G'), (T, b'T'), (N, b'N')] {
        table[c as usize] = id;
        table[c.to_ascii_lowercase() as usize] = id;
    }
    debug_assert_eq!(names[UNK as usize], "[UNK]");
    Vocab {
        table,
        unk: UNK,
        mask: Some(3),
        pad: Some(4),
        acgt: ACGT,
        tokens: names.iter().enumerate().map(|(i, n)| (i as u8, n.to_string())).collect(),
        source: "the Caduceus character tokenizer (no tokenizer.json in the model folder)".into(),
    }
}

impl Vocab {
    /// Tokenize `seq` into `out` (cleared first); returns how many bytes became [UNK].
    pub fn encode_into(&self, seq: &[u8], out: &mut Vec<u8>) -> usize {
        out.clear();
        out.extend(seq.iter().map(|&b| self.table[b as usize]));
        out.iter().filter(|&&t| t == self.unk).count()
    }

    /// The id a byte becomes.
    pub fn id(&self, b: u8) -> u8 {
        self.table[b as usize]
    }

    /// Column (0..4 for A, C, G, T) of a nucleotide id.
    pub fn nucleotide(&self, id: u8) -> Option<usize> {
        self.acgt.iter().position(|&a| a == id)
    }

    /// Largest id plus one.
    pub fn len(&self) -> usize {
        self.tokens.last().map_or(0, |(i, _)| *i as usize + 1)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// `tokenizer.json` of a model folder, if present.
    pub fn load(dir: &Path) -> Result<Option<Vocab>, String> {
        let path = dir.join("tokenizer.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        from_json(&doc).map(Some).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Whether the normalizer lowercases (the only change it may make to ASCII).
fn lowercases(n: &Value) -> Result<bool, String> {
    match n {
        Value::Null => Ok(false),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("Lowercase") => Ok(true),
            Some("NFC" | "NFD" | "NFKC" | "NFKD") => Ok(false),
            Some("Sequence") => {
                let parts = o.get("normalizers").and_then(Value::as_array).ok_or("normalizer Sequence without normalizers")?;
                parts.iter().try_fold(false, |acc, p| Ok(acc | lowercases(p)?))
            }
            other => Err(format!("normalizer {:?} is not supported (only Lowercase and the Unicode normalizations)", other.unwrap_or("?"))),
        },
        _ => Err("normalizer is not an object".into()),
    }
}

fn from_json(doc: &Value) -> Result<Vocab, String> {
    let model = doc.get("model").ok_or("no \"model\" section")?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("?");
    match kind {
        "WordLevel" => {}
        "BPE" if model.get("merges").and_then(Value::as_array).is_none_or(|m| m.is_empty()) => {}
        _ => return Err(format!("tokenizer model type {kind} is not supported (only single-character WordLevel vocabularies, or BPE without merges)")),
    }
    let vocab = model.get("vocab").and_then(Value::as_object).ok_or("model.vocab is not a mapping of tokens to ids")?;
    let lower = lowercases(doc.get("normalizer").unwrap_or(&Value::Null))?;
    let norm = |b: u8| if lower { b.to_ascii_lowercase() } else { b };
    let mut tokens: Vec<(u8, String)> = Vec::new();
    for (tok, id) in vocab {
        let id = id.as_u64().filter(|&i| i < 256).ok_or_else(|| format!("token {tok:?} has id {id}, not an integer below 256"))?;
        tokens.push((id as u8, tok.clone()));
    }
    tokens.sort();
    if let Some(w) = tokens.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("tokens {:?} and {:?} share id {}", w[0].1, w[1].1, w[0].0));
    }
    let special = |name: &str| tokens.iter().find(|(_, t)| t == name).map(|(i, _)| *i);
    let unk_name = model.get("unk_token").and_then(Value::as_str).unwrap_or("[UNK]");
    let unk = special(unk_name).ok_or_else(|| format!("the unknown token {unk_name:?} is not in the vocabulary"))?;
    let mut table = [unk; 256];
    // single characters map through the normalizer; several characters that normalize to the
    // same one (`A` and `a` under Lowercase) share its id
    for (id, tok) in &tokens {
        match tok.as_bytes() {
            [c] => {
                for b in 0..=255u8 {
                    if norm(b) == *c {
                        table[b as usize] = *id;
                    }
                }
            }
            t if t.starts_with(b"[") && t.ends_with(b"]") || t.starts_with(b"<") && t.ends_with(b">") => {}
            _ => return Err(format!("token {tok:?} is neither one character nor a special token: not a character-level DNA tokenizer")),
        }
    }
    let acgt = [b'A', b'C', b'G', b'T'].map(|c| table[c as usize]);
    if let Some(k) = acgt.iter().position(|&i| i == unk) {
        return Err(format!("the vocabulary has no token for {}", ['A', 'C', 'G', 'T'][k]));
    }
    Ok(Vocab { table, unk, mask: special("[MASK]"), pad: special("[PAD]"), acgt, tokens, source: "tokenizer.json".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plantcad() -> Value {
        serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "[PAD]", "special": true},
                {"id": 1, "content": "[MASK]", "special": true},
                {"id": 2, "content": "[UNK]", "special": true}
            ],
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Whitespace"},
            "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[MASK]": 1, "[UNK]": 2, "a": 3, "c": 4, "g": 5, "t": 6}, "unk_token": "[UNK]"}
        })
    }

    #[test]
    fn plantcaduceus_ids() {
        let v = from_json(&plantcad()).unwrap();
        let mut out = Vec::new();
        assert_eq!(v.encode_into(b"ACGTacgtNnR", &mut out), 3);
        assert_eq!(out, [3, 4, 5, 6, 3, 4, 5, 6, 2, 2, 2]);
        assert_eq!((v.unk, v.mask, v.pad, v.acgt, v.len()), (2, Some(1), Some(0), [3, 4, 5, 6], 7));
    }

    #[test]
    fn caduceus_ids_unchanged() {
        let v = caduceus();
        let mut out = Vec::new();
        assert_eq!(v.encode_into(b"ACGTNacgtnRX-", &mut out), 3);
        assert_eq!(out, [7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 6, 6, 6]);
    }

    #[test]
    fn unsupported_tokenizers_refused() {
        let mut bpe = plantcad();
        bpe["model"]["type"] = "BPE".into();
        bpe["model"]["merges"] = serde_json::json!(["a c"]);
        assert!(from_json(&bpe).unwrap_err().contains("not supported"));
        let mut kmer = plantcad();
        kmer["model"]["vocab"]["ac"] = 7.into();
        assert!(from_json(&kmer).unwrap_err().contains("not a character-level"));
        let mut upper = plantcad();
        upper["normalizer"] = Value::Null;
        // without Lowercase, upper-case bases are unknown and there is no token for A
        assert!(from_json(&upper).unwrap_err().contains("no token for A"));
    }
}
