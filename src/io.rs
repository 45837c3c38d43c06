//! Reading sequences and writing results.

pub mod decompress;
pub mod fastx;
pub mod npy;
pub mod output;
pub mod regions;
pub mod st;
