//! The access history of a cluster (thesis chapter VIII, requirement J8): the order in which its
//! pages were brought in during its last use, replayed as prefetch on the next. A hint, not
//! data: a missing or damaged history reads as empty.
//!
//! Format (`XXXX.hist` beside the descriptor): the magic `CLUHIST1`, the count (u32 LE), the
//! CRC-32C of the entries, then the entries (page numbers, u32 LE).

/// The most pages a history holds.
pub const MAX_HISTORY: usize = 1 << 16;

use clu_proto::codec::{Reader, Writer};

const MAGIC: &[u8; 8] = b"CLUHIST1";

/// Encodes a history (at most [`MAX_HISTORY`] entries are kept).
pub fn encode(pages: &[u32]) -> Vec<u8> {
    let pages = &pages[..pages.len().min(MAX_HISTORY)];
    let body = pages.iter().fold(Writer::new(), |w, p| w.u32(*p)).finish();
    Writer::with(MAGIC)
        .u32(pages.len() as u32)
        .u32(crc32c::crc32c(&body))
        .raw(&body)
        .finish()
}

/// Decodes a history; `None` if the bytes are not an intact one.
pub fn decode(bytes: &[u8]) -> Option<Vec<u32>> {
    let mut r = Reader::new(bytes);
    if r.take(MAGIC.len()).ok()? != MAGIC {
        return None;
    }
    let count = r.u32().ok()? as usize;
    let crc = r.u32().ok()?;
    if count > MAX_HISTORY || r.remaining() != count * 4 {
        return None;
    }
    let body = r.take(count * 4).ok()?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let mut r = Reader::new(body);
    (0..count).map(|_| r.u32().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let h = vec![5, 3, 9, 0, 1 << 20];
        let b = encode(&h);
        assert_eq!(decode(&b), Some(h));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert_eq!(decode(&d), None, "flipped byte {i}");
        }
        assert_eq!(decode(&b[..b.len() - 1]), None);
        assert_eq!(decode(&[]), None);
        let long: Vec<u32> = (0..MAX_HISTORY as u32 + 10).collect();
        assert_eq!(decode(&encode(&long)).map(|v| v.len()), Some(MAX_HISTORY));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
