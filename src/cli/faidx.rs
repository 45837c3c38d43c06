//! `dna-mamba faidx`: write the .fai index that regions and variant scoring read.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use noodles::fasta;

#[derive(Args, Debug)]
pub struct FaidxArgs {
    /// Uncompressed FASTA (for bgzf .gz use `samtools faidx`, which also writes the .gzi).
    pub fasta: PathBuf,
}

pub fn run(a: FaidxArgs) -> Result<()> {
    let name = a.fasta.display().to_string();
    let index = fasta::fs::index(&a.fasta).with_context(|| format!("{name}: cannot index"))?;
    let mut fai = a.fasta.clone().into_os_string();
    fai.push(".fai");
    let fai = PathBuf::from(fai);
    let mut f = crate::output::AtomicFile::create(&fai)?;
    fasta::fai::io::Writer::new(&mut f).write_index(&index).with_context(|| fai.display().to_string())?;
    f.commit()
}
