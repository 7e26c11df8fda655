//! The protocol between programs (the interface component) and the pager, over a Unix stream
//! socket. Pure encoding and decoding: no I/O here.
//!
//! A frame is a 4-byte little-endian payload length, then the payload: a version byte, a tag
//! byte, and the fields of the message, little-endian. Strings are a 2-byte length and UTF-8.
//! File descriptors (the cluster's memfd, the client's userfaultfd) travel beside the frame as
//! `SCM_RIGHTS` ancillary data. Anything malformed decodes to a [`ProtoError`], never a panic.

use crate::codec::{DecodeError, Reader, Writer};
use crate::{ClusterId, ClusterKind};

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The largest payload accepted.
pub const MAX_FRAME: usize = 64 * 1024;

/// The most clusters one [`Request::CommitGroup`] may name.
pub const MAX_GROUP: usize = 256;

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
    /// `clu_CommitGroup`: commits the clusters `ids` atomically (all or none).
    CommitGroup { ids: Vec<ClusterId> },
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
    /// `clu_Where`: the site holding the cluster's image now (answered with
    /// [`Response::Text`], empty if none).
    Where { id: ClusterId },
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
    #[error("unknown message tag {0}: the other side is another version; use a matching pager and client")]
    Tag(u8),
    /// A field with an impossible value.
    #[error("invalid field: {0}")]
    Field(&'static str),
}

impl From<DecodeError> for ProtoError {
    fn from(e: DecodeError) -> ProtoError {
        match e {
            DecodeError::Truncated => ProtoError::Truncated,
            DecodeError::Trailing(n) => ProtoError::Trailing(n),
            DecodeError::Invalid(what) => ProtoError::Field(what),
        }
    }
}

/// A frame being built: room for the length, then the version and the tag.
fn frame(tag: u8) -> Writer {
    Writer::with(&[0, 0, 0, 0, VERSION, tag])
}

/// The frame's bytes, its length filled in.
fn finish(mut w: Writer) -> Vec<u8> {
    let len = (w.len() - 4) as u32;
    w.set_u32(0, len);
    w.finish()
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
    let mut r = Reader::new(payload);
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
        let w = match self {
            Request::CreateMap { vol, npages, kind } => {
                frame(1).u16(*vol).u64(*npages).u32(*kind as u32)
            }
            Request::Map { id, mode } => frame(2).u32(id.0).u32(*mode as u32),
            Request::Unmap { id } => frame(3).u32(id.0),
            Request::Resize { id, add } => frame(4).u32(id.0).u64(*add),
            Request::Extend { id, known } => frame(5).u32(id.0).u64(*known),
            Request::Commit { id } => frame(6).u32(id.0),
            Request::Abort { id } => frame(7).u32(id.0),
            Request::Attach {
                id,
                first_page,
                base,
                npages,
                flags,
            } => frame(8)
                .u32(id.0)
                .u64(*first_page)
                .u64(*base)
                .u64(*npages)
                .u32(*flags),
            Request::Admin { words } => {
                let n = words.len().min(255);
                words[..n]
                    .iter()
                    .fold(frame(9).u8(n as u8), |w, s| w.str16(s))
            }
            Request::Grant { id, uid, mode } => frame(10).u32(id.0).u32(*uid).u32(*mode as u32),
            Request::Revoke { id, uid } => frame(11).u32(id.0).u32(*uid),
            Request::Promote { id } => frame(12).u32(id.0),
            Request::Owner { id } => frame(13).u32(id.0),
            Request::Where { id } => frame(14).u32(id.0),
            Request::CommitGroup { ids } => {
                // More than the frame holds is cut here; the pager refuses over MAX_GROUP.
                let n = ids.len().min(MAX_FRAME / 4 - 2);
                ids[..n]
                    .iter()
                    .fold(frame(15).u32(n as u32), |w, id| w.u32(id.0))
            }
        };
        finish(w)
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
                    words: (0..n).map(|_| r.str16()).collect::<Result<_, _>>()?,
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
            14 => Request::Where { id: id(&mut r)? },
            15 => {
                let n = r.count(4)?;
                Request::CommitGroup {
                    ids: (0..n).map(|_| id(&mut r)).collect::<Result<_, _>>()?,
                }
            }
            t => return Err(ProtoError::Tag(t)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// Encodes as a whole frame (header included).
    pub fn encode(&self) -> Vec<u8> {
        let w = match self {
            Response::Ok => frame(0x80),
            Response::Error { code, message } => frame(0x81).u32(*code as u32).str16(message),
            Response::Mapped {
                id,
                npages,
                writable,
            } => frame(0x82).u32(id.0).u64(*npages).u8(u8::from(*writable)),
            Response::Size { npages } => frame(0x83).u64(*npages),
            Response::Text(t) => frame(0x84).str16(t),
            Response::Owner { uid } => frame(0x85).u32(*uid),
        };
        finish(w)
    }

    /// Decodes a payload (the bytes after the frame header).
    pub fn decode(payload: &[u8]) -> Result<Response, ProtoError> {
        let (mut r, tag) = start(payload)?;
        let resp = match tag {
            0x80 => Response::Ok,
            0x81 => Response::Error {
                code: r.u32()? as i32,
                message: r.str16()?,
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
            0x84 => Response::Text(r.str16()?),
            0x85 => Response::Owner { uid: r.u32()? },
            t => return Err(ProtoError::Tag(t)),
        };
        r.finish()?;
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
            Request::Where { id },
            Request::CommitGroup {
                ids: vec![id, ClusterId(0x0002_0001)],
            },
            Request::CommitGroup { ids: vec![] },
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
