//! Reading sequences and writing results.

pub mod fastx;
pub mod npy;
pub mod output;
pub mod regions;
pub mod st;
pub mod vcf;
