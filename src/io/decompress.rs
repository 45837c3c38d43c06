//! Compressed inputs, recognised by their first bytes: gzip and BGZF (every member), bzip2 and
//! xz (every stream: `cat a.bz2 b.bz2`, pbzip2 and lbzip2 write several), zstd (every frame), or
//! plain bytes.
//!
//! The crates' own readers decode every stream and report a stream that stops early (a cut
//! file, a file holding only a magic number) as an `UnexpectedEof` error; the tests below pin
//! that, because needletail's sniffing around the same decoders turned such files into empty
//! inputs. A BGZF file cut at a block boundary decodes cleanly: its missing 28-byte EOF block
//! is reported by [`Decoder::warning`], as htslib warns.

use std::io::{self, BufReader, Chain, Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How an input is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    /// Gzip members with a `BC` extra field (samtools, bgzip).
    Bgzf,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    /// From the first bytes of an input (18 are enough to tell BGZF from gzip).
    pub fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, _, flags, _, _, _, _, _, _, _, _, b'B', b'C', ..] if flags & 4 != 0 => Compression::Bgzf,
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [b'B', b'Z', b'h', ..] => Compression::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::Plain,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Plain => "plain",
            Compression::Gzip => "gzip",
            Compression::Bgzf => "BGZF",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// The empty BGZF block that ends every complete BGZF file (SAM/BAM specification §4.1.2).
pub const BGZF_EOF: [u8; 28] = [
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, b'B', b'C', 2, 0, 0x1b, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// What the decoder has taken from the raw input: a byte count (for the progress display) and
/// the last 28 bytes (for the BGZF EOF check, which must work on pipes too).
#[derive(Default)]
struct Taken {
    bytes: AtomicU64,
    tail: Mutex<Vec<u8>>,
}

/// Counts and remembers the raw bytes on their way into the decoder.
struct Meter<R> {
    inner: R,
    taken: Arc<Taken>,
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.taken.bytes.fetch_add(n as u64, Ordering::Relaxed);
            let mut tail = self.taken.tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.extend_from_slice(&buf[n.saturating_sub(BGZF_EOF.len())..n]);
            let extra = tail.len().saturating_sub(BGZF_EOF.len());
            tail.drain(..extra);
        }
        Ok(n)
    }
}

type Raw = BufReader<Chain<Cursor<Vec<u8>>, Meter<Box<dyn Read + Send>>>>;

/// The decompressed bytes of one input.
pub struct Decoder {
    inner: Box<dyn Read + Send>,
    compression: Compression,
    taken: Arc<Taken>,
    ended: bool,
}

/// Room for the raw input ahead of the decoder: large reads, a fixed amount of memory.
const RAW_BUFFER: usize = 64 * 1024;

impl Decoder {
    /// Sniffs `read`'s compression from its first bytes and decodes it from there.
    pub fn new(read: Box<dyn Read + Send>) -> io::Result<Self> {
        let taken = Arc::new(Taken::default());
        let mut meter = Meter { inner: read, taken: taken.clone() };
        let mut head = Vec::with_capacity(18);
        (&mut meter).take(18).read_to_end(&mut head)?;
        let compression = Compression::sniff(&head);
        let raw: Raw = BufReader::with_capacity(RAW_BUFFER, Cursor::new(head).chain(meter));
        let inner: Box<dyn Read + Send> = match compression {
            Compression::Plain => Box::new(raw),
            Compression::Gzip | Compression::Bgzf => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(raw)),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(raw)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        };
        Ok(Decoder { inner, compression, taken, ended: false })
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Raw (compressed) bytes taken from the input so far.
    pub fn bytes_read(&self) -> u64 {
        self.taken.bytes.load(Ordering::Relaxed)
    }

    /// Once the input has ended: what a careful reader should be told (a BGZF file without its
    /// EOF block may have been cut at a block boundary, which decodes without an error).
    pub fn warning(&self) -> Option<String> {
        let tail = self.taken.tail.lock().unwrap_or_else(|p| p.into_inner());
        (self.ended && self.compression == Compression::Bgzf && tail[..] != BGZF_EOF[..])
            .then(|| "no BGZF EOF marker; file may be truncated".to_string())
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.ended = true;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if self.compression == Compression::Plain => Err(e),
            // name the format: "unexpected end of file" alone does not say of what
            Err(e) => Err(io::Error::new(e.kind(), format!("{} stream: {e}", self.compression.name()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn gzip(d: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }
    fn bzip2(d: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }
    fn xz(d: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }
    fn zstd(d: &[u8]) -> Vec<u8> {
        zstd::encode_all(d, 3).unwrap()
    }
    fn bgzf(d: &[u8]) -> Vec<u8> {
        let mut w = noodles::bgzf::io::Writer::new(Vec::new());
        w.write_all(d).unwrap();
        w.finish().unwrap()
    }

    fn decode(bytes: Vec<u8>) -> (io::Result<Vec<u8>>, Decoder) {
        let mut d = Decoder::new(Box::new(Cursor::new(bytes))).unwrap();
        let mut out = Vec::new();
        let r = d.read_to_end(&mut out).map(|_| out);
        (r, d)
    }

    const ENCODERS: [(Compression, fn(&[u8]) -> Vec<u8>); 5] = [
        (Compression::Gzip, gzip),
        (Compression::Bgzf, bgzf),
        (Compression::Bzip2, bzip2),
        (Compression::Xz, xz),
        (Compression::Zstd, zstd),
    ];

    /// Random bases (so that every stream is long enough to be cut anywhere).
    fn data() -> Vec<u8> {
        let mut x = 88172645463325252u64;
        (0..50_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"ACGT\n"[(x % 5) as usize]
            })
            .collect()
    }

    #[test]
    fn every_stream_is_read() {
        let d = data();
        for (c, enc) in ENCODERS {
            let mut two = enc(&d);
            two.extend(enc(&d[..1000]));
            let (r, dec) = decode(two.clone());
            assert_eq!(dec.compression(), c);
            let out = r.unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert_eq!(out.len(), d.len() + 1000, "{c:?}");
            assert_eq!(dec.bytes_read(), two.len() as u64);
        }
    }

    #[test]
    fn a_cut_stream_is_an_error() {
        let d = data();
        for (c, enc) in ENCODERS {
            let full = enc(&d);
            let mut two = full.clone();
            two.extend(enc(&d));
            let magic = match c {
                Compression::Gzip | Compression::Bgzf => 2,
                Compression::Bzip2 => 3,
                Compression::Xz => 6,
                _ => 4,
            };
            // only the magic, a cut header, a cut body, one byte short, a cut second stream
            for cut in [magic, 10, 30, full.len() / 2, full.len() - 1, full.len() + 5, full.len() + full.len() / 2] {
                let bytes = two[..cut].to_vec();
                let (r, _) = decode(bytes);
                let e = r.expect_err(&format!("{c:?} cut at {cut} of {}", full.len()));
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{c:?} {cut}: {e}");
            }
        }
    }

    #[test]
    fn empty_streams_are_empty_inputs() {
        for (c, enc) in ENCODERS {
            let (r, _) = decode(enc(b""));
            assert!(r.unwrap().is_empty(), "{c:?}");
        }
        assert!(decode(Vec::new()).0.unwrap().is_empty());
    }

    #[test]
    fn bgzf_without_eof_block_warns() {
        let d = data();
        let full = bgzf(&d);
        let (r, dec) = decode(full.clone());
        assert_eq!(r.unwrap(), d);
        assert_eq!(dec.warning(), None);
        let cut = full[..full.len() - BGZF_EOF.len()].to_vec();
        let (r, dec) = decode(cut);
        assert_eq!(r.unwrap(), d);
        assert!(dec.warning().unwrap().contains("no BGZF EOF marker"));
        // plain gzip has no EOF block to miss
        let (_, dec) = decode(gzip(&d));
        assert_eq!(dec.warning(), None);
    }
}
