//! Where results go: stdout or a file that appears only when the run succeeds.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A file written under a temporary name and renamed into place by `commit`; dropped
/// uncommitted (an error, a panic) it is removed, so no partial result is left behind.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<File>>,
}

pub fn temp_name(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let tmp = temp_name(dest);
        let file = File::create(&tmp).with_context(|| format!("{}: cannot create", dest.display()))?;
        Ok(AtomicFile { tmp, dest: dest.to_path_buf(), file: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    pub fn commit(mut self) -> Result<()> {
        let mut w = self.file.take().expect("not yet committed");
        w.flush().with_context(|| format!("{}: write failed", self.dest.display()))?;
        w.get_ref().sync_all().ok();
        drop(w);
        std::fs::rename(&self.tmp, &self.dest).with_context(|| format!("{}: cannot rename into place", self.dest.display()))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Stdout or an atomic file (gzip-compressed when its name ends in `.gz`), behind one writer.
pub enum Output {
    Stdout(BufWriter<io::Stdout>),
    File(AtomicFile),
    Gz(flate2::write::GzEncoder<AtomicFile>),
}

impl Output {
    /// `None` or `-` is stdout.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Output::Stdout(BufWriter::with_capacity(1 << 16, io::stdout()))),
            Some(p) if p == Path::new("-") => Ok(Output::Stdout(BufWriter::with_capacity(1 << 16, io::stdout()))),
            Some(p) if p.extension().is_some_and(|e| e == "gz") => {
                Ok(Output::Gz(flate2::write::GzEncoder::new(AtomicFile::create(p)?, flate2::Compression::new(6))))
            }
            Some(p) => Ok(Output::File(AtomicFile::create(p)?)),
        }
    }

    pub fn finish(self) -> Result<()> {
        match self {
            Output::Stdout(mut w) => Ok(w.flush()?),
            Output::File(f) => f.commit(),
            Output::Gz(g) => g.finish()?.commit(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(w) => w.write(buf),
            Output::File(f) => f.write(buf),
            Output::Gz(g) => g.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(w) => w.flush(),
            Output::File(f) => f.flush(),
            Output::Gz(g) => g.flush(),
        }
    }
}

/// Whether an error is a closed pipe downstream (`| head`), which ends a run normally.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<csv::Error>().is_some_and(|e| matches!(e.kind(), csv::ErrorKind::Io(e) if e.kind() == io::ErrorKind::BrokenPipe))
    })
}
