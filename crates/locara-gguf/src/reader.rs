//! A reader that knows where the file ends and never reads past the header cap.
//!
//! Every read states how many bytes it needs before it reads them, and every
//! length taken from the file is checked against the bytes left before any
//! buffer of that length exists. The end of the file is a number the caller
//! supplies (the slice length, or the file length from `fstat`), never
//! something learnt by reading until EOF.

use std::io::{self, BufRead};
use std::path::Path;

use crate::error::GgufError;
use crate::MAX_HEADER_BYTES;

pub(crate) struct Reader<'p, R> {
    inner: R,
    /// Absolute offset of the next byte to read.
    pos: u64,
    /// File length in bytes: reads must end at or before it.
    end: u64,
    /// For I/O error messages; `None` when reading from memory.
    path: Option<&'p Path>,
}

impl<'p, R: BufRead> Reader<'p, R> {
    pub(crate) fn new(inner: R, end: u64, path: Option<&'p Path>) -> Self {
        Reader {
            inner,
            pos: 0,
            end,
            path,
        }
    }

    /// Absolute offset of the next byte.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Length of the file in bytes.
    pub(crate) fn file_size(&self) -> u64 {
        self.end
    }

    /// Bytes between the current position and the end of the file.
    pub(crate) fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Checks that `n` more bytes exist and stay within the header cap.
    /// `what` names the field for the error message; it is only called on
    /// failure, so the common path allocates nothing.
    pub(crate) fn ensure(&self, n: u64, what: &dyn Fn() -> String) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos,
                what: what(),
                needed: n,
                file_size: self.end,
            });
        }
        self.ensure_header_cap(n, what)
    }

    /// Checks that reading `n` more bytes keeps the header within its cap.
    pub(crate) fn ensure_header_cap(
        &self,
        n: u64,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        // `pos <= end`, and `n` was checked against `end - pos` or is small,
        // so this cannot overflow; `saturating_add` keeps it obviously so.
        if self.pos.saturating_add(n) > MAX_HEADER_BYTES {
            return Err(GgufError::HeaderCap {
                offset: self.pos,
                what: what(),
                cap: MAX_HEADER_BYTES,
            });
        }
        Ok(())
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in
    /// the bytes left. Call before allocating anything sized by `count`.
    pub(crate) fn ensure_count_fits(
        &self,
        count: u64,
        min_size: u64,
        count_offset: u64,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        let min_bytes = u128::from(count) * u128::from(min_size);
        if min_bytes > u128::from(self.remaining()) {
            return Err(GgufError::LengthPastEnd {
                offset: count_offset,
                what: what(),
                count,
                min_bytes,
                available: self.remaining(),
            });
        }
        // Fits in the file, hence in u64.
        self.ensure_header_cap(min_bytes as u64, what)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(err) => Err(self.io_error(err, buf.len() as u64)),
        }
    }

    /// A read that failed although the bytes should exist: the file shrank
    /// under us (reported as truncation) or the device failed.
    fn io_error(&self, err: io::Error, needed: u64) -> GgufError {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            return GgufError::Truncated {
                offset: self.pos,
                what: "read (the file shrank while being read)".to_owned(),
                needed,
                file_size: self.end,
            };
        }
        GgufError::Io {
            path: self.path.map(Path::to_path_buf),
            source: err,
        }
    }

    /// Reads `n` bytes, handing them to `sink` in pieces as they sit in the
    /// reader's buffer: no zero-filled staging buffer, no per-piece copy
    /// beyond the one `sink` makes. Checks the end of the file first.
    pub(crate) fn read_with(
        &mut self,
        n: u64,
        what: &dyn Fn() -> String,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), GgufError> {
        self.ensure(n, what)?;
        let mut left = n;
        while left > 0 {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.io_error(err, left)),
            };
            if available.is_empty() {
                let err = io::Error::from(io::ErrorKind::UnexpectedEof);
                return Err(self.io_error(err, left));
            }
            // Bounded by `left`, so the cast back is lossless.
            let take = (available.len() as u64).min(left) as usize;
            sink(&available[..take]);
            self.inner.consume(take);
            self.pos += take as u64;
            left -= take as u64;
        }
        Ok(())
    }

    /// The fast path for one length-prefixed string, taken when the reader's
    /// buffer already holds the 8-byte length and all of the string: if the
    /// length is at most `max_len` and the string lies inside the file and the
    /// header cap, appends the string to `out` and returns its length.
    /// Otherwise consumes nothing and returns `None`; the caller then takes
    /// the checked slow path, which reports whatever is wrong. A vocabulary
    /// is hundreds of thousands of such strings, so this halves the time to
    /// validate a model.
    pub(crate) fn try_buffered_string(&mut self, out: &mut Vec<u8>, max_len: u64) -> Option<u64> {
        let (remaining, pos) = (self.remaining(), self.pos);
        let available = self.inner.fill_buf().ok()?;
        let prefix: [u8; 8] = available.get(..8)?.try_into().ok()?;
        let len = u64::from_le_bytes(prefix);
        if len > max_len {
            return None;
        }
        // `max_len` is far below u64::MAX, so this cannot overflow.
        let total = 8 + len;
        if total > remaining || pos + total > MAX_HEADER_BYTES {
            return None;
        }
        // Within the buffer, so it fits in usize.
        let string = available.get(8..total as usize)?;
        out.extend_from_slice(string);
        self.inner.consume(total as usize);
        self.pos += total;
        Some(len)
    }

    /// Reads `n` bytes onto the end of `buf`.
    pub(crate) fn append(
        &mut self,
        n: u64,
        buf: &mut Vec<u8>,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        self.read_with(n, what, |piece| buf.extend_from_slice(piece))
    }

    /// Reads `count` little-endian values of `N` bytes each onto the end of
    /// `out`, through a small stack buffer so that no second copy of the
    /// array is ever held.
    pub(crate) fn decode_into<const N: usize, T>(
        &mut self,
        count: u64,
        out: &mut Vec<T>,
        from_le: fn([u8; N]) -> T,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        const CHUNK_BYTES: usize = 4096;
        let mut chunk = [0u8; CHUNK_BYTES];
        let per_chunk = (CHUNK_BYTES / N) as u64;
        let mut left = count;
        while left > 0 {
            let n = left.min(per_chunk) as usize;
            let bytes = &mut chunk[..n * N];
            self.ensure(bytes.len() as u64, what)?;
            self.fill(bytes)?;
            out.extend(bytes.chunks_exact(N).map(|raw| {
                let mut value = [0u8; N];
                value.copy_from_slice(raw);
                from_le(value)
            }));
            left -= n as u64;
        }
        Ok(())
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> Result<[u8; N], GgufError> {
        self.ensure(N as u64, what)?;
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    pub(crate) fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads `n` bytes. The caller has already checked `n` against a cap that
    /// fits in memory; this checks it against the end of the file before
    /// allocating.
    pub(crate) fn bytes(
        &mut self,
        n: u64,
        what: &dyn Fn() -> String,
    ) -> Result<Vec<u8>, GgufError> {
        self.ensure(n, what)?;
        // Inside the file and the header cap, so it fits in memory.
        let mut buf = Vec::with_capacity(n as usize);
        self.append(n, &mut buf, what)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what() -> String {
        "test field".to_owned()
    }

    #[test]
    fn reads_little_endian_and_tracks_position() {
        let bytes = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut r = Reader::new(&bytes[..], bytes.len() as u64, None);
        assert_eq!(r.u32(&what).unwrap(), 1);
        assert_eq!(r.u64(&what).unwrap(), 2);
        assert_eq!(r.pos(), 12);
        assert_eq!(r.u8(&what).unwrap(), 9);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn decode_into_reads_little_endian_across_chunks() {
        // 3000 u16 values: 6000 bytes, more than one 4096-byte chunk.
        let bytes: Vec<u8> = (0..3000u16).flat_map(u16::to_le_bytes).collect();
        let mut r = Reader::new(&bytes[..], bytes.len() as u64, None);
        let mut out = Vec::new();
        r.decode_into(3000, &mut out, u16::from_le_bytes, &what)
            .unwrap();
        assert_eq!(out, (0..3000u16).collect::<Vec<_>>());
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn read_with_hands_over_every_byte_of_a_small_buffer() {
        let bytes: Vec<u8> = (0..=255).collect();
        // A 7-byte buffer forces many pieces.
        let mut r = Reader::new(io::BufReader::with_capacity(7, &bytes[..]), 256, None);
        let mut seen = Vec::new();
        r.read_with(256, &what, |piece| seen.extend_from_slice(piece))
            .unwrap();
        assert_eq!(seen, bytes);
        assert_eq!(r.pos(), 256);
    }

    #[test]
    fn short_read_is_truncated_with_offset() {
        let bytes = [1, 2, 3];
        let mut r = Reader::new(&bytes[..], 3, None);
        let err = r.u32(&what).unwrap_err();
        assert_eq!(err.kind(), "truncated");
        assert_eq!(
            err.to_string(),
            "at offset 0x0: test field needs 4 bytes but the file ends at 0x3"
        );
    }

    #[test]
    fn huge_count_is_refused_before_allocating() {
        let bytes = [0u8; 16];
        let r = Reader::new(&bytes[..], 16, None);
        let err = r.ensure_count_fits(u64::MAX, 8, 0, &what).unwrap_err();
        assert_eq!(err.kind(), "length_past_end");
        assert!(err.to_string().contains("18446744073709551615"), "{err}");
    }

    #[test]
    fn a_failing_reader_is_an_io_error() {
        struct Failing;
        impl io::Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("device gone"))
            }
        }
        let mut r = Reader::new(io::BufReader::new(Failing), 100, None);
        let err = r.u32(&what).unwrap_err();
        assert_eq!(err.kind(), "io");
        assert_eq!(err.to_string(), "cannot read the input: device gone");
    }

    #[test]
    fn a_reader_shorter_than_the_declared_end_is_truncation_not_a_panic() {
        // The file shrank between fstat and read.
        let bytes = [0u8; 2];
        let mut r = Reader::new(&bytes[..], 100, None);
        let err = r.u64(&what).unwrap_err();
        assert_eq!(err.kind(), "truncated");
    }
}
