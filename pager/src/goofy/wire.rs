//! The messages between a primary and its backup servers, over TCP.
//!
//! A frame is `len: u32`, `crc: u32` (CRC-32C of the payload), then `len` payload bytes, all
//! little-endian. A payload starts with a version byte and a kind byte. Every decode failure is
//! a typed [`WireError`]: a backup refuses garbage, it never applies it.
//!
//! LSNs: an operation carries the **primary's** LSN of its commit, which the backup records as
//! the last one it applied (its own journal has its own LSNs). A restarted backup reports that
//! LSN, so both sides speak of the primary's journal positions.

use std::io::{self, Read, Write};

use journal::Lsn;

const VERSION: u8 = 1;
/// The largest payload: one operation of 16 MiB of pages, with room for its headers.
pub const MAX_FRAME: usize = (16 << 20) + 4096;

/// What can go wrong reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The frame announces more than [`MAX_FRAME`] bytes.
    #[error("a frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    /// The payload does not match its checksum.
    #[error("a frame fails its checksum")]
    Checksum,
    /// Another version of the protocol.
    #[error("protocol version {0}, this server speaks {VERSION}")]
    Version(u8),
    /// A malformed payload.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// One run of whole pages of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Its first page in the cluster.
    pub first_page: u64,
    /// The pages' bytes (a multiple of the page size).
    pub pages: Vec<u8>,
}

/// A message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Primary to backup: "I am the primary of volume `uid` at `epoch`".
    Hello { uid: u64, epoch: u64, name: String },
    /// Backup to primary: the last operation of the volume it applied (the primary's LSN).
    Welcome { applied: Lsn },
    /// Primary to backup: the new images of some pages of a cluster of `npages` pages,
    /// committed at `lsn` on the primary.
    Op {
        epoch: u64,
        lsn: Lsn,
        clu: u16,
        npages: u64,
        runs: Vec<Run>,
    },
    /// Backup to primary: every operation up to `lsn` is durable here.
    Ack { lsn: Lsn },
    /// Either way: the request is refused, and why (a stale epoch, a damaged message).
    Refused { why: String },
}

struct W(Vec<u8>);

impl W {
    fn new(kind: u8) -> W {
        W(vec![VERSION, kind])
    }
    fn u8(mut self, v: u8) -> W {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> W {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> W {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> W {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn lsn(self, l: Lsn) -> W {
        self.u64(l.file).u64(l.offset)
    }
    fn bytes(mut self, b: &[u8]) -> W {
        self = self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn lsn(&mut self) -> Result<Lsn, WireError> {
        Ok(Lsn::new(self.u64()?, self.u64()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

impl Msg {
    /// The payload (without the frame header).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Hello { uid, epoch, name } => {
                W::new(1).u64(*uid).u64(*epoch).bytes(name.as_bytes())
            }
            Msg::Welcome { applied } => W::new(2).lsn(*applied),
            Msg::Op {
                epoch,
                lsn,
                clu,
                npages,
                runs,
            } => runs.iter().fold(
                W::new(3)
                    .u64(*epoch)
                    .lsn(*lsn)
                    .u16(*clu)
                    .u64(*npages)
                    .u32(runs.len() as u32),
                |w, r| w.u64(r.first_page).bytes(&r.pages),
            ),
            Msg::Ack { lsn } => W::new(4).lsn(*lsn),
            Msg::Refused { why } => W::new(5).bytes(why.as_bytes()),
        }
        .u8(0xee)
        .0
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Msg, WireError> {
        let mut r = R(payload);
        let v = r.u8()?;
        if v != VERSION {
            return Err(WireError::Version(v));
        }
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| WireError::Malformed("text is not UTF-8"))
        };
        let msg = match r.u8()? {
            1 => Msg::Hello {
                uid: r.u64()?,
                epoch: r.u64()?,
                name: text(r.bytes()?)?,
            },
            2 => Msg::Welcome { applied: r.lsn()? },
            3 => {
                let (epoch, lsn, clu, npages) = (r.u64()?, r.lsn()?, r.u16()?, r.u64()?);
                let n = r.u32()? as usize;
                if n > payload.len() / 12 {
                    return Err(WireError::Malformed("more runs than bytes"));
                }
                let mut runs = Vec::with_capacity(n);
                for _ in 0..n {
                    let first_page = r.u64()?;
                    let pages = r.bytes()?;
                    if pages.is_empty() || pages.len() % client::PAGE_SIZE != 0 {
                        return Err(WireError::Malformed("a run is not whole pages"));
                    }
                    let end = first_page
                        .checked_add((pages.len() / client::PAGE_SIZE) as u64)
                        .ok_or(WireError::Malformed("a run past the end"))?;
                    if end > npages {
                        return Err(WireError::Malformed("a run past the cluster's end"));
                    }
                    runs.push(Run {
                        first_page,
                        pages: pages.to_vec(),
                    });
                }
                Msg::Op {
                    epoch,
                    lsn,
                    clu,
                    npages,
                    runs,
                }
            }
            4 => Msg::Ack { lsn: r.lsn()? },
            5 => Msg::Refused {
                why: text(r.bytes()?)?,
            },
            _ => return Err(WireError::Malformed("unknown kind")),
        };
        if r.u8()? != 0xee || !r.0.is_empty() {
            return Err(WireError::Malformed("bad end of message"));
        }
        Ok(msg)
    }
}

/// Writes one framed message.
pub fn send(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    let payload = msg.encode();
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.extend((payload.len() as u32).to_le_bytes());
    frame.extend(crc32c::crc32c(&payload).to_le_bytes());
    frame.extend(payload);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one framed message.
pub fn recv(r: &mut impl Read) -> Result<Msg, WireError> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME {
        return Err(WireError::Oversized(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    if crc32c::crc32c(&payload) != crc {
        return Err(WireError::Checksum);
    }
    Msg::decode(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Msg> {
        vec![
            Msg::Hello {
                uid: 7,
                epoch: 2,
                name: "rel".into(),
            },
            Msg::Welcome {
                applied: Lsn::new(3, 8192),
            },
            Msg::Op {
                epoch: 2,
                lsn: Lsn::new(1, 4096),
                clu: 5,
                npages: 10,
                runs: vec![Run {
                    first_page: 8,
                    pages: vec![9u8; 2 * client::PAGE_SIZE],
                }],
            },
            Msg::Ack {
                lsn: Lsn::new(1, 4096),
            },
            Msg::Refused {
                why: "stale".into(),
            },
        ]
    }

    #[test]
    fn messages_round_trip_through_frames_and_damage_is_refused() {
        for m in samples() {
            let mut buf = Vec::new();
            send(&mut buf, &m).unwrap();
            assert_eq!(recv(&mut buf.as_slice()).unwrap(), m);
            let mut bad = buf.clone();
            let last = bad.len() - 2;
            bad[last] ^= 1;
            assert!(matches!(
                recv(&mut bad.as_slice()),
                Err(WireError::Checksum)
            ));
            let payload = &buf[8..];
            for cut in 0..payload.len() {
                assert!(Msg::decode(&payload[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
        let op = Msg::Op {
            epoch: 1,
            lsn: Lsn::default(),
            clu: 0,
            npages: 1,
            runs: vec![Run {
                first_page: 1,
                pages: vec![0; client::PAGE_SIZE],
            }],
        };
        assert!(
            Msg::decode(&op.encode()).is_err(),
            "a run past the cluster's end"
        );
        let mut huge = Vec::new();
        huge.extend(u32::MAX.to_le_bytes());
        huge.extend([0u8; 4]);
        assert!(matches!(
            recv(&mut huge.as_slice()),
            Err(WireError::Oversized(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(m) = Msg::decode(&bytes) {
                prop_assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
            }
        }
    }
}
