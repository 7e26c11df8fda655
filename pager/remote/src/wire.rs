//! The messages between a site and the site that mounts a volume.
//!
//! A frame is `len: u32`, `crc: u32` (CRC-32C of the payload), then `len` payload bytes, all
//! little-endian; a payload starts with a version byte and a kind byte. A request is answered
//! by exactly one answer, in order. Pages travel in runs of at most [`MAX_RUN_PAGES`]; a
//! commit larger than that is sent as several [`Req::Commit`] parts on one connection, the
//! last one marked, and is applied by the serving site as one atomic journal operation.

use std::io::{self, Read, Write};

use clu_proto::codec::{DecodeError, Reader, Writer};
use clu_proto::frame::{self, FrameError};
use clu_proto::{ClusterId, ClusterKind, ErrorCode, VolId, PAGE_SIZE};

const VERSION: u8 = 1;
/// Pages in one run of a read or a commit part (4 MiB).
pub const MAX_RUN_PAGES: u64 = 1024;
/// The largest payload: one run, with room for its headers.
pub const MAX_FRAME: usize = (MAX_RUN_PAGES as usize) * PAGE_SIZE + 4096;

/// What can go wrong reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed, closed or timed out.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The frame announces more than [`MAX_FRAME`] bytes.
    #[error("a frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    /// The payload does not match its checksum.
    #[error("a frame fails its checksum")]
    Checksum,
    /// Another version of the protocol.
    #[error("protocol version {0}, this end speaks {VERSION}; run the same pager release on every site of the cell")]
    Version(u8),
    /// A malformed payload.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

impl From<DecodeError> for WireError {
    fn from(_: DecodeError) -> WireError {
        WireError::Malformed("truncated or overlong field")
    }
}

/// A request from the site that maps to the site that mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Req {
    /// The first message: the caller's site name (its certificate must name it).
    Hello {
        /// The caller's site.
        site: String,
    },
    /// The volume's figures.
    Info(VolId),
    /// A cluster's descriptor.
    GetDesc(ClusterId),
    /// Every cluster's descriptor.
    List(VolId),
    /// A new cluster.
    Create {
        /// The volume.
        vol: VolId,
        /// Its size.
        npages: u64,
        /// Its owner (the caller's uid on the calling site).
        owner: u32,
        /// Its kind.
        kind: ClusterKind,
    },
    /// Replaces a descriptor (its id and size are kept by the serving site).
    SetDesc(ClusterId, Vec<u8>),
    /// Destroys a cluster.
    Destroy(ClusterId),
    /// Grows a cluster.
    Resize(ClusterId, u64),
    /// Changes the volume's capacity.
    SetCapacity(VolId, u64),
    /// Pages `first..first+npages` (at most [`MAX_RUN_PAGES`]).
    Read(ClusterId, u64, u64),
    /// Part of a commit: runs of pages; the `last` part commits them all, atomically.
    Commit {
        /// The cluster.
        id: ClusterId,
        /// Whether this part ends the commit.
        last: bool,
        /// Runs: first page and whole pages.
        runs: Vec<(u64, Vec<u8>)>,
    },
    /// The access history.
    History(ClusterId),
    /// Replaces the access history.
    SetHistory(ClusterId, Vec<u32>),
    /// The first message to a memory server: the caller's site and this run of its pager (a
    /// new incarnation frees what an earlier run of the same site held there).
    MemHello {
        /// The caller's site.
        site: String,
        /// Its pager's run, random at its start.
        incarnation: u64,
    },
    /// One evicted page, to keep in a new slot.
    PageOut(Vec<u8>),
    /// The page of a slot.
    PageIn(u32),
    /// Releases slots (at most [`MAX_RUN_PAGES`] at once).
    PageFree(Vec<u32>),
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    /// Done.
    Ok,
    /// The serving site's name (to a Hello).
    Site(String),
    /// A volume's figures: clusters, used pages, capacity, logLSN and durableLSN (file, offset).
    Info([u64; 7]),
    /// One encoded descriptor.
    Desc(Vec<u8>),
    /// Encoded descriptors.
    Descs(Vec<Vec<u8>>),
    /// Page images.
    Pages(Vec<u8>),
    /// The commit's LSN (file, offset).
    Lsn(u64, u64),
    /// An access history.
    History(Vec<u32>),
    /// The memory server's slot for a page.
    Slot(u32),
    /// A memory server's answer to a hello: its name, and its run (random at its start: a
    /// new one means the pages of the last run are gone).
    Welcome {
        /// The server's name.
        server: String,
        /// Its run.
        incarnation: u64,
    },
    /// A refusal: the code the client gets, and the serving site's message.
    Err(ErrorCode, String),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const INFO: u8 = 2;
    pub const GET_DESC: u8 = 3;
    pub const LIST: u8 = 4;
    pub const CREATE: u8 = 5;
    pub const SET_DESC: u8 = 6;
    pub const DESTROY: u8 = 7;
    pub const RESIZE: u8 = 8;
    pub const SET_CAPACITY: u8 = 9;
    pub const READ: u8 = 10;
    pub const COMMIT: u8 = 11;
    pub const HISTORY: u8 = 12;
    pub const SET_HISTORY: u8 = 13;
    pub const MEM_HELLO: u8 = 32;
    pub const PAGE_OUT: u8 = 33;
    pub const PAGE_IN: u8 = 34;
    pub const PAGE_FREE: u8 = 35;

    pub const OK: u8 = 64;
    pub const SITE: u8 = 65;
    pub const INFO_R: u8 = 66;
    pub const DESC: u8 = 67;
    pub const DESCS: u8 = 68;
    pub const PAGES: u8 = 69;
    pub const LSN: u8 = 70;
    pub const HISTORY_R: u8 = 71;
    pub const ERR: u8 = 72;
    pub const SLOT: u8 = 73;
    pub const WELCOME: u8 = 74;
}

fn start(k: u8) -> Writer {
    Writer::new().u8(VERSION).u8(k)
}

fn open(payload: &[u8]) -> Result<(Reader<'_>, u8), WireError> {
    let mut r = Reader::new(payload);
    let v = r.u8()?;
    if v != VERSION {
        return Err(WireError::Version(v));
    }
    let k = r.u8()?;
    Ok((r, k))
}

fn kind_of(code: u8) -> Result<ClusterKind, WireError> {
    ClusterKind::from_code(u32::from(code)).ok_or(WireError::Malformed("unknown cluster kind"))
}

fn pages(r: &mut Reader<'_>) -> Result<Vec<u8>, WireError> {
    let b = r.bytes32()?;
    if b.len() % PAGE_SIZE != 0 || b.len() as u64 > MAX_RUN_PAGES * PAGE_SIZE as u64 {
        return Err(WireError::Malformed(
            "pages that are not whole pages of one run",
        ));
    }
    Ok(b.to_vec())
}

impl Req {
    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        use kind::*;
        match self {
            Req::Hello { site } => start(HELLO).str16(site),
            Req::Info(v) => start(INFO).u16(v.0),
            Req::GetDesc(id) => start(GET_DESC).u32(id.0),
            Req::List(v) => start(LIST).u16(v.0),
            Req::Create {
                vol,
                npages,
                owner,
                kind,
            } => start(CREATE)
                .u16(vol.0)
                .u64(*npages)
                .u32(*owner)
                .u8(*kind as u8),
            Req::SetDesc(id, d) => start(SET_DESC).u32(id.0).bytes32(d),
            Req::Destroy(id) => start(DESTROY).u32(id.0),
            Req::Resize(id, n) => start(RESIZE).u32(id.0).u64(*n),
            Req::SetCapacity(v, n) => start(SET_CAPACITY).u16(v.0).u64(*n),
            Req::Read(id, first, n) => start(READ).u32(id.0).u64(*first).u64(*n),
            Req::Commit { id, last, runs } => {
                let mut w = start(COMMIT)
                    .u32(id.0)
                    .u8(u8::from(*last))
                    .u32(runs.len() as u32);
                for (first, p) in runs {
                    w = w.u64(*first).bytes32(p);
                }
                w
            }
            Req::History(id) => start(HISTORY).u32(id.0),
            Req::SetHistory(id, h) => {
                let mut w = start(SET_HISTORY).u32(id.0).u32(h.len() as u32);
                for p in h {
                    w = w.u32(*p);
                }
                w
            }
            Req::MemHello { site, incarnation } => start(MEM_HELLO).str16(site).u64(*incarnation),
            Req::PageOut(p) => start(PAGE_OUT).bytes32(p),
            Req::PageIn(slot) => start(PAGE_IN).u32(*slot),
            Req::PageFree(slots) => slots
                .iter()
                .fold(start(PAGE_FREE).u32(slots.len() as u32), |w, s| w.u32(*s)),
        }
        .finish()
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Req, WireError> {
        use kind::*;
        let (mut r, k) = open(payload)?;
        let id = |r: &mut Reader<'_>| r.u32().map(ClusterId);
        let vol = |r: &mut Reader<'_>| r.u16().map(VolId);
        let req = match k {
            HELLO => Req::Hello { site: r.str16()? },
            INFO => Req::Info(vol(&mut r)?),
            GET_DESC => Req::GetDesc(id(&mut r)?),
            LIST => Req::List(vol(&mut r)?),
            CREATE => Req::Create {
                vol: vol(&mut r)?,
                npages: r.u64()?,
                owner: r.u32()?,
                kind: kind_of(r.u8()?)?,
            },
            SET_DESC => Req::SetDesc(id(&mut r)?, r.bytes32()?.to_vec()),
            DESTROY => Req::Destroy(id(&mut r)?),
            RESIZE => Req::Resize(id(&mut r)?, r.u64()?),
            SET_CAPACITY => Req::SetCapacity(vol(&mut r)?, r.u64()?),
            READ => Req::Read(id(&mut r)?, r.u64()?, r.u64()?),
            COMMIT => {
                let id = id(&mut r)?;
                let last = r.flag()?;
                let n = r.count(12)?;
                let mut runs = Vec::with_capacity(n);
                for _ in 0..n {
                    let first = r.u64()?;
                    runs.push((first, pages(&mut r)?));
                }
                Req::Commit { id, last, runs }
            }
            HISTORY => Req::History(id(&mut r)?),
            SET_HISTORY => {
                let id = id(&mut r)?;
                let n = r.count(4)?;
                let mut h = Vec::with_capacity(n);
                for _ in 0..n {
                    h.push(r.u32()?);
                }
                Req::SetHistory(id, h)
            }
            MEM_HELLO => Req::MemHello {
                site: r.str16()?,
                incarnation: r.u64()?,
            },
            PAGE_OUT => {
                let p = r.bytes32()?;
                if p.len() != PAGE_SIZE {
                    return Err(WireError::Malformed(
                        "a paged-out page that is not one page",
                    ));
                }
                Req::PageOut(p.to_vec())
            }
            PAGE_IN => Req::PageIn(r.u32()?),
            PAGE_FREE => {
                let n = r.count(4)?;
                if n as u64 > MAX_RUN_PAGES {
                    return Err(WireError::Malformed("too many slots in one free"));
                }
                let mut slots = Vec::with_capacity(n);
                for _ in 0..n {
                    slots.push(r.u32()?);
                }
                Req::PageFree(slots)
            }
            _ => return Err(WireError::Malformed("unknown request")),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Resp {
    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        use kind::*;
        match self {
            Resp::Ok => start(OK),
            Resp::Site(s) => start(SITE).str16(s),
            Resp::Info(v) => v.iter().fold(start(INFO_R), |w, x| w.u64(*x)),
            Resp::Desc(d) => start(DESC).bytes32(d),
            Resp::Descs(ds) => ds
                .iter()
                .fold(start(DESCS).u32(ds.len() as u32), |w, d| w.bytes32(d)),
            Resp::Pages(p) => start(PAGES).bytes32(p),
            Resp::Lsn(f, o) => start(LSN).u64(*f).u64(*o),
            Resp::History(h) => h
                .iter()
                .fold(start(HISTORY_R).u32(h.len() as u32), |w, p| w.u32(*p)),
            Resp::Err(code, m) => start(ERR).u32(*code as i32 as u32).str16(m),
            Resp::Slot(slot) => start(SLOT).u32(*slot),
            Resp::Welcome {
                server,
                incarnation,
            } => start(WELCOME).str16(server).u64(*incarnation),
        }
        .finish()
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Resp, WireError> {
        use kind::*;
        let (mut r, k) = open(payload)?;
        let resp = match k {
            OK => Resp::Ok,
            SITE => Resp::Site(r.str16()?),
            INFO_R => {
                let mut v = [0u64; 7];
                for x in &mut v {
                    *x = r.u64()?;
                }
                Resp::Info(v)
            }
            DESC => Resp::Desc(r.bytes32()?.to_vec()),
            DESCS => {
                let n = r.count(4)?;
                let mut ds = Vec::with_capacity(n);
                for _ in 0..n {
                    ds.push(r.bytes32()?.to_vec());
                }
                Resp::Descs(ds)
            }
            PAGES => Resp::Pages(pages(&mut r)?),
            LSN => Resp::Lsn(r.u64()?, r.u64()?),
            HISTORY_R => {
                let n = r.count(4)?;
                let mut h = Vec::with_capacity(n);
                for _ in 0..n {
                    h.push(r.u32()?);
                }
                Resp::History(h)
            }
            ERR => {
                let code = ErrorCode::from_code(r.u32()? as i32)
                    .ok_or(WireError::Malformed("unknown error code"))?;
                Resp::Err(code, r.str16()?)
            }
            SLOT => Resp::Slot(r.u32()?),
            WELCOME => Resp::Welcome {
                server: r.str16()?,
                incarnation: r.u64()?,
            },
            _ => return Err(WireError::Malformed("unknown answer")),
        };
        r.finish()?;
        Ok(resp)
    }
}

/// Writes one framed payload.
pub fn send(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    frame::send(w, payload)
}

/// Bytes of a payload that [`last_commit_of`] needs.
pub const PEEK: usize = 7;

/// The cluster of a request whose first bytes are `head`, if it is the last part of a commit
/// (not yet checked against its checksum: a hint, for work that may start early).
pub fn last_commit_of(head: &[u8]) -> Option<ClusterId> {
    match head {
        [VERSION, kind::COMMIT, a, b, c, d, 1, ..] => {
            Some(ClusterId(u32::from_le_bytes([*a, *b, *c, *d])))
        }
        _ => None,
    }
}

impl From<FrameError> for WireError {
    fn from(e: FrameError) -> WireError {
        match e {
            FrameError::Io(e) => WireError::Io(e),
            FrameError::Oversized { len, .. } => WireError::Oversized(len),
            FrameError::Checksum => WireError::Checksum,
        }
    }
}

/// Reads one framed payload, calling `peek` on its first [`PEEK`] bytes (fewer for a shorter
/// one) before reading the rest: work on a large frame can start while it arrives.
pub fn recv_peeking<T>(
    r: &mut impl Read,
    peek: impl FnOnce(&[u8]) -> T,
) -> Result<(Vec<u8>, T), WireError> {
    Ok(frame::recv_peeking(r, MAX_FRAME, PEEK, peek)?)
}

/// Reads one framed payload.
pub fn recv(r: &mut impl Read) -> Result<Vec<u8>, WireError> {
    recv_at_most(r, MAX_FRAME)
}

/// The largest request a memory server takes: one page, or a free of [`MAX_RUN_PAGES`] slots.
pub const MEM_MAX_FRAME: usize = PAGE_SIZE + 64;

/// Reads one framed payload of at most `max` bytes.
pub fn recv_at_most(r: &mut impl Read, max: usize) -> Result<Vec<u8>, WireError> {
    Ok(frame::recv(r, max)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_message_decodes_to_itself() {
        let id = ClusterId(0x0002_0003);
        let page = vec![7u8; PAGE_SIZE];
        let reqs = vec![
            Req::Hello { site: "a".into() },
            Req::Info(VolId(2)),
            Req::GetDesc(id),
            Req::List(VolId(2)),
            Req::Create {
                vol: VolId(2),
                npages: 9,
                owner: 1000,
                kind: ClusterKind::Shareable,
            },
            Req::SetDesc(id, vec![1, 2, 3]),
            Req::Destroy(id),
            Req::Resize(id, 4),
            Req::SetCapacity(VolId(2), 0),
            Req::Read(id, 5, 6),
            Req::Commit {
                id,
                last: true,
                runs: vec![(3, page.clone()), (9, page.clone())],
            },
            Req::History(id),
            Req::SetHistory(id, vec![1, 5, 2]),
            Req::MemHello {
                site: "a".into(),
                incarnation: u64::MAX - 3,
            },
            Req::PageOut(vec![5u8; PAGE_SIZE]),
            Req::PageIn(17),
            Req::PageFree(vec![u32::MAX, 0, 3]),
        ];
        for r in reqs {
            assert_eq!(Req::decode(&r.encode()).ok(), Some(r.clone()), "{r:?}");
        }
        let resps = vec![
            Resp::Ok,
            Resp::Site("b".into()),
            Resp::Info([1, 2, 3, 4, 5, 6, 7]),
            Resp::Desc(vec![9; 40]),
            Resp::Descs(vec![vec![1], vec![2, 3]]),
            Resp::Pages(page),
            Resp::Lsn(77, 4096),
            Resp::History(vec![3, 4]),
            Resp::Err(ErrorCode::Unavailable, "gone".into()),
            Resp::Slot(9),
            Resp::Welcome {
                server: "m".into(),
                incarnation: 77,
            },
        ];
        for r in resps {
            assert_eq!(Resp::decode(&r.encode()).ok(), Some(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn a_frame_is_checked() {
        let mut buf = Vec::new();
        send(&mut buf, &Req::Info(VolId(1)).encode()).expect("send");
        assert!(recv(&mut buf.as_slice()).is_ok());
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            recv(&mut bad.as_slice()),
            Err(WireError::Checksum)
        ));
        let mut huge = Writer::new().u32(u32::MAX).u32(0).finish();
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            recv(&mut huge.as_slice()),
            Err(WireError::Oversized(_))
        ));
    }

    #[test]
    fn the_last_part_of_a_commit_is_seen_from_its_first_bytes() {
        let id = ClusterId(0x0002_0009);
        let part = |last| {
            let mut buf = Vec::new();
            let req = Req::Commit {
                id,
                last,
                runs: vec![(0, vec![1u8; PAGE_SIZE])],
            };
            send(&mut buf, &req.encode()).expect("send");
            buf
        };
        let seen = |buf: Vec<u8>| {
            let (payload, early) = recv_peeking(&mut buf.as_slice(), last_commit_of).expect("recv");
            assert!(Req::decode(&payload).is_ok());
            early
        };
        assert_eq!(seen(part(true)), Some(id));
        assert_eq!(seen(part(false)), None);
        let mut info = Vec::new();
        send(&mut info, &Req::Info(VolId(2)).encode()).expect("send");
        assert_eq!(seen(info), None);
        assert_eq!(last_commit_of(&[VERSION]), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Req::decode(&bytes);
            let _ = Resp::decode(&bytes);
            let mut with_version = vec![VERSION];
            with_version.extend_from_slice(&bytes);
            let _ = Req::decode(&with_version);
            let _ = Resp::decode(&with_version);
        }
    }
}
