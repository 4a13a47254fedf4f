//! Readers between the layer blob and the tar parser.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::Compression;

/// Decompressor for one layer blob.
pub(super) enum Decoder<R: Read> {
    Plain(BufReader<R>),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Decoder<R> {
    pub(super) fn new(blob: R, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Decoder::Plain(BufReader::with_capacity(64 * 1024, blob)),
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(blob))),
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::new(blob)?),
        })
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(reader) => reader.read(buf),
            Decoder::Gzip(reader) => reader.read(buf),
            Decoder::Zstd(reader) => reader.read(buf),
        }
    }
}

/// Reader that hashes and counts the uncompressed stream and fails once it passes `limit`.
pub(super) struct HashingReader<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub bytes: u64,
    pub limit: u64,
    pub exceeded: bool,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded {
            return Err(io::Error::other(
                "layer exceeds the maximum uncompressed size",
            ));
        }
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            self.exceeded = true;
            return Err(io::Error::other(
                "layer exceeds the maximum uncompressed size",
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reader that fails once more than a set number of bytes is read while a budget is
/// active. The budget is shared so that the caller can set it while the tar parser owns
/// the reader.
pub(super) struct BudgetReader<R> {
    pub inner: R,
    /// Bytes left, or `None` when reads are not limited.
    pub remaining: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(remaining) = self.remaining.get() else {
            return self.inner.read(buf);
        };
        if remaining == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tar headers of one entry exceed the size limit",
            ));
        }
        let len = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.remaining.set(Some(remaining - n as u64));
        Ok(n)
    }
}

/// Reader that ends a stream which stops right after an entry's data, without the
/// padding to a 512-byte block and the end-of-archive marker: after the real end it
/// returns those zero bytes, and records where the real data ended in `end`.
///
/// umoci 0.4.7's `insert` writes such layers, and containers/storage and umoci read them.
/// The zeros are added above the hashing reader, so the diff ID still covers only the real
/// bytes, and the caller checks that no entry's data reaches past `end`, so a file is
/// never completed with zeros.
pub(super) struct EndPadding<R> {
    pub inner: R,
    pub position: u64,
    pub end: Rc<Cell<Option<u64>>>,
    pub zeros_left: u64,
}

impl<R: Read> Read for EndPadding<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.end.get().is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.position += n as u64;
                return Ok(n);
            }
            self.end.set(Some(self.position));
            self.zeros_left = (512 - self.position % 512) % 512 + 1024;
        }
        let n = buf.len().min(self.zeros_left as usize);
        buf[..n].fill(0);
        self.zeros_left -= n as u64;
        Ok(n)
    }
}
