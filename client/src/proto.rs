//! The protocol between programs (the interface component) and the pager, over a Unix stream
//! socket. Pure encoding and decoding: no I/O here.
//!
//! A frame is a 4-byte little-endian payload length, then the payload: a version byte, a tag
//! byte, and the fields of the message, little-endian. Strings are a 2-byte length and UTF-8.
//! File descriptors (the cluster's memfd, the client's userfaultfd) travel beside the frame as
//! `SCM_RIGHTS` ancillary data. Anything malformed decodes to a [`ProtoError`], never a panic.

use crate::{ClusterId, ClusterKind};

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The largest payload accepted.
pub const MAX_FRAME: usize = 64 * 1024;

/// `Attach` flag: the userfaultfd was opened with `UFFD_FEATURE_WP_ASYNC`; the caller's pagemap
/// comes with it.
pub const ATTACH_WP_ASYNC: u32 = 1;

/// Mapping modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapMode {
    /// Read and write (`CLU_RDWR`).
    ReadWrite = 0,
    /// Read only (`CLU_RDONLY`).
    ReadOnly = 1,
}

/// A request from a program or an administration command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `clu_CreateMap`: a new cluster in volume `vol`, mapped by the caller.
    CreateMap {
        vol: u16,
        npages: u64,
        kind: ClusterKind,
    },
    /// `clu_Map`.
    Map { id: ClusterId, mode: MapMode },
    /// `clu_Unmap`.
    Unmap { id: ClusterId },
    /// `clu_Resize`: add pages.
    Resize { id: ClusterId, add: u64 },
    /// `clu_Extend`: the caller maps `known` pages; map what others added.
    Extend { id: ClusterId, known: u64 },
    /// `clu_Commit`.
    Commit { id: ClusterId },
    /// `clu_Abort`.
    Abort { id: ClusterId },
    /// The caller mapped pages `first_page..first_page+npages` of `id` at address `base` and
    /// registered them with its userfaultfd, which is attached to the first such message of a
    /// connection (with, in write-protect-async mode, the caller's `/proc/self/pagemap`): the
    /// pager resolves the faults there. `flags`: [`ATTACH_WP_ASYNC`].
    Attach {
        id: ClusterId,
        first_page: u64,
        base: u64,
        npages: u64,
        flags: u32,
    },
    /// An administration command, as its words (`vol create data`), answered with text.
    Admin { words: Vec<String> },
    /// `clu_Grant`: the owner lets `uid` map the cluster in `mode`.
    Grant {
        id: ClusterId,
        uid: u32,
        mode: MapMode,
    },
    /// `clu_Revoke`: the owner withdraws `uid`'s grant.
    Revoke { id: ClusterId, uid: u32 },
    /// `clu_Promote`: a temporary cluster becomes persistent and its image is committed.
    Promote { id: ClusterId },
    /// `clu_Owner`: who owns the cluster (answered with [`Response::Owner`]).
    Owner { id: ClusterId },
}

/// The pager's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Done.
    Ok,
    /// Refused or failed: a [`crate::ErrorCode`] value and a message for the user.
    Error { code: i32, message: String },
    /// The cluster is mapped: its memfd is attached; `npages` pages, writable or not.
    Mapped {
        id: ClusterId,
        npages: u64,
        writable: bool,
    },
    /// The cluster's size after a resize or for an extend.
    Size { npages: u64 },
    /// The output of an administration command.
    Text(String),
    /// The owner of a cluster.
    Owner { uid: u32 },
}

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The payload ended early.
    #[error("truncated message")]
    Truncated,
    /// Bytes left after the message.
    #[error("{0} unexpected bytes after the message")]
    Trailing(usize),
    /// Over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    /// Another protocol version.
    #[error("protocol version {0}, this build speaks {VERSION}; use a matching pager and client")]
    Version(u8),
    /// An unknown message tag.
    #[error("unknown message tag {0}")]
    Tag(u8),
    /// A field with an impossible value.
    #[error("invalid field: {0}")]
    Field(&'static str),
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(tag: u8) -> Writer {
        Writer(vec![0, 0, 0, 0, VERSION, tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        // Longer strings are cut at a character boundary: messages are for people.
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut w = self.u16(end as u16);
        w.0.extend_from_slice(&s.as_bytes()[..end]);
        w
    }
    fn frame(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<String, ProtoError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| ProtoError::Field("string is not UTF-8"))
    }
    fn end(&self) -> Result<(), ProtoError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(ProtoError::Trailing(n)),
        }
    }
}

/// The payload length announced by a frame header, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, ProtoError> {
    let n = u32::from_le_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError::Oversized(n));
    }
    Ok(n)
}

fn start(payload: &[u8]) -> Result<(Reader<'_>, u8), ProtoError> {
    let mut r = Reader(payload);
    let v = r.u8()?;
    if v != VERSION {
        return Err(ProtoError::Version(v));
    }
    let tag = r.u8()?;
    Ok((r, tag))
}

fn mode(v: u32) -> Result<MapMode, ProtoError> {
    match v {
        0 => Ok(MapMode::ReadWrite),
        1 => Ok(MapMode::ReadOnly),
        _ => Err(ProtoError::Field("mapping mode")),
    }
}

impl Request {
    /// Encodes as a whole frame (header included).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::CreateMap { vol, npages, kind } => {
                Writer::new(1).u16(*vol).u64(*npages).u32(*kind as u32)
            }
            Request::Map { id, mode } => Writer::new(2).u32(id.0).u32(*mode as u32),
            Request::Unmap { id } => Writer::new(3).u32(id.0),
            Request::Resize { id, add } => Writer::new(4).u32(id.0).u64(*add),
            Request::Extend { id, known } => Writer::new(5).u32(id.0).u64(*known),
            Request::Commit { id } => Writer::new(6).u32(id.0),
            Request::Abort { id } => Writer::new(7).u32(id.0),
            Request::Attach {
                id,
                first_page,
                base,
                npages,
                flags,
            } => Writer::new(8)
                .u32(id.0)
                .u64(*first_page)
                .u64(*base)
                .u64(*npages)
                .u32(*flags),
            Request::Admin { words } => {
                let n = words.len().min(255);
                words[..n]
                    .iter()
                    .fold(Writer::new(9).u8(n as u8), |w, s| w.str(s))
            }
            Request::Grant { id, uid, mode } => {
                Writer::new(10).u32(id.0).u32(*uid).u32(*mode as u32)
            }
            Request::Revoke { id, uid } => Writer::new(11).u32(id.0).u32(*uid),
            Request::Promote { id } => Writer::new(12).u32(id.0),
            Request::Owner { id } => Writer::new(13).u32(id.0),
        }
        .frame()
    }

    /// Decodes a payload (the bytes after the frame header).
    pub fn decode(payload: &[u8]) -> Result<Request, ProtoError> {
        let (mut r, tag) = start(payload)?;
        let id = |r: &mut Reader<'_>| r.u32().map(ClusterId);
        let req = match tag {
            1 => Request::CreateMap {
                vol: r.u16()?,
                npages: r.u64()?,
                kind: ClusterKind::from_code(r.u32()?).ok_or(ProtoError::Field("cluster kind"))?,
            },
            2 => Request::Map {
                id: id(&mut r)?,
                mode: mode(r.u32()?)?,
            },
            3 => Request::Unmap { id: id(&mut r)? },
            4 => Request::Resize {
                id: id(&mut r)?,
                add: r.u64()?,
            },
            5 => Request::Extend {
                id: id(&mut r)?,
                known: r.u64()?,
            },
            6 => Request::Commit { id: id(&mut r)? },
            7 => Request::Abort { id: id(&mut r)? },
            8 => Request::Attach {
                id: id(&mut r)?,
                first_page: r.u64()?,
                base: r.u64()?,
                npages: r.u64()?,
                flags: match r.u32()? {
                    f if f & !ATTACH_WP_ASYNC == 0 => f,
                    _ => return Err(ProtoError::Field("attach flags")),
                },
            },
            9 => {
                let n = r.u8()?;
                Request::Admin {
                    words: (0..n).map(|_| r.str()).collect::<Result<_, _>>()?,
                }
            }
            10 => Request::Grant {
                id: id(&mut r)?,
                uid: r.u32()?,
                mode: mode(r.u32()?)?,
            },
            11 => Request::Revoke {
                id: id(&mut r)?,
                uid: r.u32()?,
            },
            12 => Request::Promote { id: id(&mut r)? },
            13 => Request::Owner { id: id(&mut r)? },
            t => return Err(ProtoError::Tag(t)),
        };
        r.end()?;
        Ok(req)
    }
}

impl Response {
    /// Encodes as a whole frame (header included).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Ok => Writer::new(0x80),
            Response::Error { code, message } => Writer::new(0x81).u32(*code as u32).str(message),
            Response::Mapped {
                id,
                npages,
                writable,
            } => Writer::new(0x82)
                .u32(id.0)
                .u64(*npages)
                .u8(u8::from(*writable)),
            Response::Size { npages } => Writer::new(0x83).u64(*npages),
            Response::Text(t) => Writer::new(0x84).str(t),
            Response::Owner { uid } => Writer::new(0x85).u32(*uid),
        }
        .frame()
    }

    /// Decodes a payload (the bytes after the frame header).
    pub fn decode(payload: &[u8]) -> Result<Response, ProtoError> {
        let (mut r, tag) = start(payload)?;
        let resp = match tag {
            0x80 => Response::Ok,
            0x81 => Response::Error {
                code: r.u32()? as i32,
                message: r.str()?,
            },
            0x82 => Response::Mapped {
                id: ClusterId(r.u32()?),
                npages: r.u64()?,
                writable: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(ProtoError::Field("writable flag")),
                },
            },
            0x83 => Response::Size { npages: r.u64()? },
            0x84 => Response::Text(r.str()?),
            0x85 => Response::Owner { uid: r.u32()? },
            t => return Err(ProtoError::Tag(t)),
        };
        r.end()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload(frame: &[u8]) -> &[u8] {
        let n = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, frame.len() - 4);
        &frame[4..]
    }

    fn requests() -> Vec<Request> {
        let id = ClusterId(0x0001_0002);
        vec![
            Request::CreateMap {
                vol: 1,
                npages: 20,
                kind: ClusterKind::Shareable,
            },
            Request::Map {
                id,
                mode: MapMode::ReadOnly,
            },
            Request::Unmap { id },
            Request::Resize { id, add: 5 },
            Request::Extend { id, known: 25 },
            Request::Commit { id },
            Request::Abort { id },
            Request::Attach {
                id,
                first_page: 3,
                base: 0x7f00_0000_0000,
                npages: 256,
                flags: ATTACH_WP_ASYNC,
            },
            Request::Admin {
                words: vec!["vol".into(), "create".into(), "données".into()],
            },
            Request::Grant {
                id,
                uid: 1000,
                mode: MapMode::ReadOnly,
            },
            Request::Revoke { id, uid: 65534 },
            Request::Promote { id },
            Request::Owner { id },
        ]
    }

    #[test]
    fn every_message_round_trips_and_every_truncation_is_refused() {
        for req in requests() {
            let f = req.encode();
            assert_eq!(Request::decode(payload(&f)), Ok(req.clone()));
            for cut in 0..f.len() - 4 {
                assert!(
                    Request::decode(&f[4..4 + cut]).is_err(),
                    "{req:?} cut at {cut}"
                );
            }
            let mut long = payload(&f).to_vec();
            long.push(0);
            assert_eq!(Request::decode(&long), Err(ProtoError::Trailing(1)));
        }
        for resp in [
            Response::Ok,
            Response::Error {
                code: -13,
                message: "access denied: owner 1000".into(),
            },
            Response::Mapped {
                id: ClusterId(7),
                npages: 3,
                writable: true,
            },
            Response::Size { npages: 9 },
            Response::Text("ID NAME\n".into()),
            Response::Owner { uid: 1000 },
        ] {
            assert_eq!(Response::decode(payload(&resp.encode())), Ok(resp));
        }
    }

    #[test]
    fn foreign_versions_tags_and_fields_are_named() {
        assert_eq!(Request::decode(&[2, 1]), Err(ProtoError::Version(2)));
        assert_eq!(Request::decode(&[VERSION, 99]), Err(ProtoError::Tag(99)));
        let mut f = Request::Map {
            id: ClusterId(1),
            mode: MapMode::ReadWrite,
        }
        .encode();
        let n = f.len();
        f[n - 4] = 7;
        assert_eq!(
            Request::decode(&f[4..]),
            Err(ProtoError::Field("mapping mode"))
        );
        assert_eq!(
            frame_len((MAX_FRAME as u32 + 1).to_le_bytes()),
            Err(ProtoError::Oversized(MAX_FRAME + 1))
        );
        let long = "é".repeat(40_000);
        let f = Response::Text(long).encode();
        let Ok(Response::Text(t)) = Response::decode(&f[4..]) else {
            panic!()
        };
        assert!(t.len() <= u16::MAX as usize && t.chars().all(|c| c == 'é'));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
            let mut with_version = vec![VERSION];
            with_version.extend_from_slice(&bytes);
            let _ = Request::decode(&with_version);
            let _ = Response::decode(&with_version);
        }
    }
}
