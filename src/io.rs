//! Reading sequences and writing results.

pub mod bed;
pub mod decompress;
pub mod fastx;
pub mod regions;
pub mod vcf;
