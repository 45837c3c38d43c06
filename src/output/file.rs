//! Where results go: stdout, a file that appears only when the run succeeds, or a device or
//! FIFO written in place; `.gz` names are BGZF-compressed so they can be indexed (tabix).
//!
//! Partial results live under `.NAME.partial-PID` beside the destination until they are
//! renamed into place. Every such path is registered here, so an error, a panic, a failed
//! rename or a SIGINT/SIGTERM/SIGHUP removes it instead of leaving it behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Temporary files and folders of this process that a signal must remove.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register(p: &Path) {
    PENDING.lock().unwrap_or_else(|e| e.into_inner()).push(p.to_path_buf());
}

fn unregister(p: &Path) {
    PENDING.lock().unwrap_or_else(|e| e.into_inner()).retain(|q| q != p);
}

fn remove_path(p: &Path) {
    if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        let _ = fs::remove_dir_all(p);
    } else {
        let _ = fs::remove_file(p);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove the partial outputs, then exit with 128 + the signal
/// (what a shell reports for a process killed by it). Called once by the binary.
#[cfg(unix)]
pub fn remove_partials_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
            pending.iter().for_each(|p| remove_path(p));
            std::process::exit(128 + sig);
        }
    })?;
    Ok(())
}

#[cfg(not(unix))]
pub fn remove_partials_on_signal() -> Result<()> {
    Ok(())
}

/// The temporary name of `dest` while it is written.
pub fn temp_name(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// A folder written under a temporary name (npy output) and renamed into place by `commit`.
pub struct AtomicDir {
    pub tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl AtomicDir {
    /// `dest` must not exist, or be an empty folder.
    pub fn create(dest: &Path) -> Result<Self> {
        if dest.exists() && fs::read_dir(dest).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!("{}: already exists and is not an empty folder", dest.display());
        }
        let tmp = temp_name(dest);
        register(&tmp);
        if let Err(e) = fs::create_dir_all(&tmp) {
            unregister(&tmp);
            return Err(e).with_context(|| format!("{}: cannot create", tmp.display()));
        }
        Ok(AtomicDir { tmp, dest: dest.to_path_buf(), done: false })
    }

    pub fn commit(mut self) -> Result<()> {
        if self.dest.exists() {
            fs::remove_dir(&self.dest).with_context(|| format!("{}: cannot replace", self.dest.display()))?;
        }
        fs::rename(&self.tmp, &self.dest).with_context(|| format!("{}: cannot rename into place", self.dest.display()))?;
        unregister(&self.tmp);
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.done {
            remove_path(&self.tmp);
            unregister(&self.tmp);
        }
    }
}

/// A file written under a temporary name and renamed into place by `commit`; dropped
/// uncommitted (an error, a panic) or failing to rename, it is removed.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// A regular file at `dest`, or at the end of the links `dest` names (the links stay).
    pub fn create(dest: &Path) -> Result<Self> {
        match resolve(Some(dest), &[])? {
            Target::Replace(p) => Self::create_exact(&p),
            _ => bail!("{}: is a device or FIFO; this output must be a regular file", dest.display()),
        }
    }

    fn create_exact(dest: &Path) -> Result<Self> {
        let tmp = temp_name(dest);
        register(&tmp);
        match File::create(&tmp) {
            Ok(f) => Ok(AtomicFile { tmp, dest: dest.to_path_buf(), file: Some(BufWriter::with_capacity(1 << 20, f)) }),
            Err(e) => {
                unregister(&tmp);
                Err(e).with_context(|| format!("{}: cannot create", dest.display()))
            }
        }
    }

    pub fn commit(mut self) -> Result<()> {
        let result = (|| -> Result<()> {
            let mut w = self.file.take().expect("not yet committed");
            w.flush().with_context(|| format!("{}: write failed", self.dest.display()))?;
            w.get_ref().sync_all().ok();
            drop(w);
            fs::rename(&self.tmp, &self.dest).with_context(|| format!("{}: cannot rename into place", self.dest.display()))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        unregister(&self.tmp);
        result
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
            let _ = fs::remove_file(&self.tmp);
            unregister(&self.tmp);
        }
    }
}

/// What `-o PATH` names once links are followed.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// A character device, FIFO or socket: written in place (no temporary file is possible).
    InPlace(PathBuf),
    /// A regular file, existing or not: written beside it and renamed over it.
    Replace(PathBuf),
}

/// Resolve `-o`: `None` or `-` is stdout; a symlink is followed to its target (which is
/// then replaced, the link kept); a path that is one of `inputs` is refused.
pub fn resolve(path: Option<&Path>, inputs: &[String]) -> Result<Target> {
    let Some(path) = path.filter(|p| *p != Path::new("-")) else { return Ok(Target::Stdout) };
    if let Ok(out) = fs::metadata(path) {
        for input in inputs.iter().filter(|i| *i != "-") {
            if fs::metadata(input).is_ok_and(|m| same_file(&m, &out)) {
                bail!("-o {}: is also the input {input}; refusing to overwrite an input", path.display());
            }
        }
        if out.is_dir() {
            bail!("-o {}: is a folder", path.display());
        }
        // opened through the name given: /dev/stdout and /dev/fd/N are links to pipes
        if is_special(&out) {
            return Ok(Target::InPlace(path.to_path_buf()));
        }
        return Ok(Target::Replace(fs::canonicalize(path).with_context(|| format!("-o {}", path.display()))?));
    }
    // nothing there yet, or a link to nothing: the file is made where the links end
    let mut dest = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = fs::read_link(&dest).with_context(|| format!("{}: cannot read link", path.display()))?;
                dest = match dest.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            _ => break,
        }
    }
    Ok(Target::Replace(dest))
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    false
}

#[cfg(unix)]
fn is_special(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    t.is_char_device() || t.is_fifo() || t.is_socket() || t.is_block_device()
}

#[cfg(not(unix))]
fn is_special(_: &fs::Metadata) -> bool {
    false
}

/// Whether `path` names BGZF output.
pub fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz" || e == "bgz")
}

/// The uncompressed bytes' destination.
enum Dest {
    Stdout(BufWriter<io::Stdout>),
    InPlace(BufWriter<File>),
    Replace(AtomicFile),
}

impl Write for Dest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Dest::Stdout(w) => w.write(buf),
            Dest::InPlace(w) => w.write(buf),
            Dest::Replace(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Dest::Stdout(w) => w.flush(),
            Dest::InPlace(w) => w.flush(),
            Dest::Replace(f) => f.flush(),
        }
    }
}

impl Dest {
    fn finish(self) -> Result<()> {
        match self {
            Dest::Stdout(mut w) => Ok(w.flush()?),
            Dest::InPlace(mut w) => Ok(w.flush()?),
            Dest::Replace(f) => f.commit(),
        }
    }
}

/// Results of a run: stdout, a device/FIFO, or a file renamed into place by `finish`;
/// BGZF-compressed when the name ends in `.gz`.
pub struct Output {
    inner: Option<Inner>,
}

enum Inner {
    Plain(Dest),
    Bgzf(noodles::bgzf::io::Writer<Dest>),
}

impl Output {
    /// `None` or `-` is stdout. `inputs` are the run's input files, never overwritten.
    pub fn open(path: Option<&Path>, inputs: &[String]) -> Result<Self> {
        let target = resolve(path, inputs)?;
        let gz = path.is_some_and(is_gz);
        let dest = match target {
            Target::Stdout => Dest::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
            Target::InPlace(p) => {
                let f = OpenOptions::new().write(true).open(&p).with_context(|| format!("{}: cannot open for writing", p.display()))?;
                Dest::InPlace(BufWriter::with_capacity(1 << 16, f))
            }
            Target::Replace(p) => Dest::Replace(AtomicFile::create_exact(&p)?),
        };
        let inner = if gz { Inner::Bgzf(noodles::bgzf::io::Writer::new(dest)) } else { Inner::Plain(dest) };
        Ok(Output { inner: Some(inner) })
    }

    pub fn finish(mut self) -> Result<()> {
        match self.inner.take().expect("finished once") {
            Inner::Plain(d) => d.finish(),
            Inner::Bgzf(w) => w.finish()?.finish(),
        }
    }

    fn inner(&mut self) -> &mut dyn Write {
        match self.inner.as_mut().expect("not finished") {
            Inner::Plain(d) => d,
            Inner::Bgzf(w) => w,
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner().flush()
    }
}

impl Drop for Output {
    /// Stdout and devices keep what was written before an error; a file is removed.
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            match inner {
                Inner::Plain(mut d) => {
                    let _ = d.flush();
                }
                Inner::Bgzf(w) => {
                    if let Ok(mut d) = w.finish() {
                        let _ = d.flush();
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_and_inputs_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.csv");
        fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink("real.csv", &link).unwrap();
        assert_eq!(resolve(Some(&link), &[]).unwrap(), Target::Replace(fs::canonicalize(&real).unwrap()));
        let dangling = dir.path().join("dangling.csv");
        std::os::unix::fs::symlink("new.csv", &dangling).unwrap();
        assert_eq!(resolve(Some(&dangling), &[]).unwrap(), Target::Replace(dir.path().join("new.csv")));
        let input = real.to_string_lossy().into_owned();
        let err = resolve(Some(&link), &[input]).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite an input"), "{err}");
        assert_eq!(resolve(None, &[]).unwrap(), Target::Stdout);
        assert_eq!(resolve(Some(Path::new("-")), &[]).unwrap(), Target::Stdout);
    }

    #[test]
    fn failed_rename_leaves_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        // a folder in the way makes the rename fail (`create` itself refuses a folder)
        let dest = dir.path().join("out.csv");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("x"), "x").unwrap();
        assert!(AtomicFile::create(&dest).is_err());
        let mut f = AtomicFile::create_exact(&dest).unwrap();
        f.write_all(b"rows").unwrap();
        assert!(f.commit().is_err());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out.csv")]);
        assert!(!PENDING.lock().unwrap().contains(&temp_name(&dest)));
    }
}
