//! The one little-endian codec of the project's own formats: the socket protocol
//! ([`crate::protocol`]), the storage descriptors, access histories, Goofy's wire and its state
//! slots all encode with [`Writer`] and decode with [`Reader`]. (The journal, at the bottom
//! floor, has its own record format, documented with it.)
//!
//! A [`Reader`] never panics and never reads past its buffer: every shortfall is a
//! [`DecodeError`].

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes ended early.
    #[error("truncated")]
    Truncated,
    /// Bytes left after the end.
    #[error("{0} unexpected bytes after the end")]
    Trailing(usize),
    /// A field with an impossible value.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// Builds little-endian bytes, by value: `Writer::new().u8(1).u32(7).finish()`.
#[derive(Clone, Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer(Vec::new())
    }

    /// A writer whose bytes start with `prefix` (a header filled in later, a magic number).
    pub fn with(prefix: &[u8]) -> Writer {
        Writer(prefix.to_vec())
    }

    /// One byte.
    pub fn u8(mut self, v: u8) -> Writer {
        self.0.push(v);
        self
    }

    /// Two bytes, little-endian.
    pub fn u16(mut self, v: u16) -> Writer {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Four bytes, little-endian.
    pub fn u32(mut self, v: u32) -> Writer {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Eight bytes, little-endian.
    pub fn u64(mut self, v: u64) -> Writer {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Bytes as they are.
    pub fn raw(mut self, b: &[u8]) -> Writer {
        self.0.extend_from_slice(b);
        self
    }

    /// A byte string with a 4-byte length before it.
    pub fn bytes32(self, b: &[u8]) -> Writer {
        self.u32(b.len() as u32).raw(b)
    }

    /// A text with a 2-byte length before it, cut at a character boundary to fit (texts are
    /// for people: a long one loses its tail, never its validity).
    pub fn str16(self, s: &str) -> Writer {
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16).raw(&s.as_bytes()[..end])
    }

    /// Zeros up to `len` bytes in all (nothing if there are already as many).
    pub fn pad_to(mut self, len: usize) -> Writer {
        if self.0.len() < len {
            self.0.resize(len, 0);
        }
        self
    }

    /// Overwrites four bytes at `at` (a length or checksum known only at the end).
    ///
    /// # Panics
    /// If `at + 4` is past what was written (a bug in the encoder).
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// How many bytes were written.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads little-endian bytes from the front of a buffer.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let b = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A byte that must be 0 or 1.
    pub fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("a flag that is neither 0 nor 1")),
        }
    }

    /// A byte string with a 4-byte length before it.
    pub fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A UTF-8 text with a 2-byte length before it.
    pub fn str16(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        utf8(self.take(n)?)
    }

    /// A UTF-8 text with a 4-byte length before it.
    pub fn str32(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes32()?;
        utf8(b)
    }

    /// A count of items of at least `min_size` bytes each (4 bytes), refused if that many
    /// could not fit in what is left: a hostile count allocates nothing.
    pub fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > self.remaining() / min_size.max(1) {
            return Err(DecodeError::Invalid("a count larger than the message"));
        }
        Ok(n)
    }

    /// Skips to byte `at` of the buffer (forward only).
    pub fn skip_to(&mut self, at: usize) -> Result<(), DecodeError> {
        if at < self.pos {
            return Err(DecodeError::Invalid("a field out of order"));
        }
        self.take(at - self.pos).map(drop)
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes read so far.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

fn utf8(b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid("text is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_field_round_trips_and_every_shortfall_is_named() {
        let mut w = Writer::with(b"MAGC")
            .u8(1)
            .u16(0x0203)
            .u32(0x0405_0607)
            .u64(u64::MAX - 1)
            .bytes32(b"abc")
            .str16("données")
            .u8(1)
            .pad_to(48)
            .u32(0);
        let end = w.len() - 4;
        w.set_u32(end, 0xdead_beef);
        let b = w.finish();
        let mut r = Reader::new(&b);
        assert_eq!(r.take(4), Ok(&b"MAGC"[..]));
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x0405_0607));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.bytes32(), Ok(&b"abc"[..]));
        assert_eq!(r.str16().as_deref(), Ok("données"));
        assert_eq!(r.flag(), Ok(true));
        r.skip_to(48).unwrap();
        assert_eq!(r.u32(), Ok(0xdead_beef));
        assert_eq!(r.finish(), Ok(()));
        for cut in 0..b.len() {
            let mut r = Reader::new(&b[..cut]);
            let all = (|| {
                r.take(4)?;
                r.u8()?;
                r.u16()?;
                r.u32()?;
                r.u64()?;
                r.bytes32()?;
                r.str16()?;
                r.flag()?;
                r.skip_to(48)?;
                r.u32()
            })();
            assert_eq!(all, Err(DecodeError::Truncated), "cut at {cut}");
        }
        assert_eq!(
            Reader::new(&[2]).flag(),
            Err(DecodeError::Invalid("a flag that is neither 0 nor 1"))
        );
        assert_eq!(Reader::new(&[1, 2]).finish(), Err(DecodeError::Trailing(2)));
        let long = "é".repeat(40_000);
        let b = Writer::new().str16(&long).finish();
        let t = Reader::new(&b).str16().unwrap();
        assert!(t.len() <= u16::MAX as usize && t.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_count_that_cannot_fit_is_refused_before_anything_is_allocated() {
        let b = Writer::new().u32(1000).u64(0).finish();
        assert!(Reader::new(&b).count(8).is_err());
        let b = Writer::new().u32(1).u64(0).finish();
        assert_eq!(Reader::new(&b).count(8), Ok(1));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            let _ = r.u8();
            let _ = r.str16();
            let _ = r.count(3);
            let _ = r.bytes32();
            let _ = r.skip_to(usize::MAX);
            let _ = r.str32();
        }
    }
}
