//! The frame every connection between sites uses (remote paging, memory servers, Goofy):
//! `len: u32`, `crc: u32` (CRC-32C of the payload), then `len` payload bytes, little-endian.
//! A frame over the protocol's limit is refused before its payload is read; one that fails
//! its checksum is refused after.

use std::io::{self, Read, Write};

use crate::codec::Writer;

/// Why a frame was not read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed, closed or timed out.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The frame announces more bytes than the protocol allows.
    #[error("a frame of {len} bytes is over the {max}-byte limit")]
    Oversized {
        /// What it announced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload does not match its checksum.
    #[error("a frame fails its checksum")]
    Checksum,
}

/// Writes `payload` as one frame.
pub fn send(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let head = Writer::new()
        .u32(payload.len() as u32)
        .u32(crc32c::crc32c(payload))
        .finish();
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// Reads one frame of at most `max` payload bytes.
pub fn recv(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    recv_peeking(r, max, 0, |_| ()).map(|(p, ())| p)
}

/// Reads one frame of at most `max` payload bytes, calling `peek` on its first `first` bytes
/// (fewer for a shorter payload) before reading the rest, so that work on a large frame can
/// start while it arrives (the bytes are not checked yet: a hint only).
pub fn recv_peeking<T>(
    r: &mut impl Read,
    max: usize,
    first: usize,
    peek: impl FnOnce(&[u8]) -> T,
) -> Result<(Vec<u8>, T), FrameError> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > max {
        return Err(FrameError::Oversized { len, max });
    }
    let mut payload = vec![0u8; len];
    let first = len.min(first);
    r.read_exact(&mut payload[..first])?;
    let early = peek(&payload[..first]);
    r.read_exact(&mut payload[first..])?;
    if crc32c::crc32c(&payload) != crc {
        return Err(FrameError::Checksum);
    }
    Ok((payload, early))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_checked() {
        let mut buf = Vec::new();
        send(&mut buf, b"hello").expect("send");
        assert_eq!(recv(&mut buf.as_slice(), 16).expect("recv"), b"hello");
        let (p, seen) = recv_peeking(&mut buf.as_slice(), 16, 2, |h| h.to_vec()).expect("peek");
        assert_eq!((p.as_slice(), seen.as_slice()), (&b"hello"[..], &b"he"[..]));
        assert!(matches!(
            recv(&mut buf.as_slice(), 4),
            Err(FrameError::Oversized { len: 5, max: 4 })
        ));
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            recv(&mut bad.as_slice(), 16),
            Err(FrameError::Checksum)
        ));
        assert!(matches!(recv(&mut &buf[..6], 16), Err(FrameError::Io(_))));
    }
}
