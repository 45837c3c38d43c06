//! Nucleotides to Caduceus token ids (model-format.md §1.3).
//!
//! The ids: A=7 C=8 G=9 T=10 N=11 in either case, any other byte [UNK]=6 (the table is
//! `model::vocab::caduceus`, the vocabulary of models without a tokenizer.json). IUPAC codes
//! are deliberately not turned into N (needletail's `normalize` would): the reference tokenizer
//! maps them to [UNK]. No special tokens are ever added.

pub const UNK: u8 = 6;
pub const A: u8 = 7;
pub const C: u8 = 8;
pub const G: u8 = 9;
pub const T: u8 = 10;
pub const N: u8 = 11;
/// The four nucleotide ids in column order A, C, G, T.
pub const ACGT: [u8; 4] = [A, C, G, T];

/// Tokenize `seq` into `out` with the Caduceus ids (cleared first); returns how many bytes
/// became [UNK]. Models with a tokenizer.json read their own vocabulary (`Model::vocab`).
pub fn encode_into(seq: &[u8], out: &mut Vec<u8>) -> usize {
    static CADUCEUS: std::sync::OnceLock<crate::model::vocab::Vocab> = std::sync::OnceLock::new();
    CADUCEUS.get_or_init(crate::model::vocab::caduceus).encode_into(seq, out)
}

/// Reverse complement in token space, with the model's complement map.
pub fn reverse_complement(ids: &[u8], complement: &[usize]) -> Vec<u8> {
    ids.iter().rev().map(|&t| complement[t as usize] as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_unknowns() {
        let mut v = Vec::new();
        let unk = encode_into(b"ACGTNacgtnRX-", &mut v);
        assert_eq!(v, [7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 6, 6, 6]);
        assert_eq!(unk, 3);
    }

    #[test]
    fn revcomp_tokens() {
        let comp = crate::model::weights::default_complement(16);
        assert_eq!(reverse_complement(&[7, 8, 9, 10, 11, 6], &comp), [6, 11, 7, 8, 9, 10]);
    }
}
