//! Nucleotides to Caduceus token ids (model-format.md §1.3).
//!
//! A 256-entry table: A=7 C=8 G=9 T=10 N=11 in either case, any other byte [UNK]=6. IUPAC codes
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

const TABLE: [u8; 256] = {
    let mut t = [UNK; 256];
    t[b'A' as usize] = A;
    t[b'a' as usize] = A;
    t[b'C' as usize] = C;
    t[b'c' as usize] = C;
    t[b'G' as usize] = G;
    t[b'g' as usize] = G;
    t[b'T' as usize] = T;
    t[b't' as usize] = T;
    t[b'N' as usize] = N;
    t[b'n' as usize] = N;
    t
};

/// Tokenize `seq` into `out` (cleared first); returns how many bytes became [UNK].
pub fn encode_into(seq: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    out.extend(seq.iter().map(|&b| TABLE[b as usize]));
    out.iter().filter(|&&t| t == UNK).count()
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
