//! Reading sequences and writing results.

pub mod fastx;
pub mod regions;
