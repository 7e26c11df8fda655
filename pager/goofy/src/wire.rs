//! The messages between a primary and its backup servers, over TCP.
//!
//! A frame is `len: u32`, `crc: u32` (CRC-32C of the payload), then `len` payload bytes, all
//! little-endian. A payload starts with a version byte and a kind byte. Every decode failure is
//! a typed [`WireError`]: a backup refuses garbage, it never applies it.
//!
//! LSNs: an operation carries the **primary's** LSNs (`lsn..end` in its journal); the backup
//! records the `end` of the last one it applied, with the epoch of the primary that sent it, as
//! its [`Position`] (its own journal has its own LSNs). A reconnecting backup reports that
//! position, so both sides speak of the primary's journal. A volume restored from a backup
//! starts its journal after the LSN it was restored to, and its `goofy.conf` records that
//! origin: LSNs stay comparable across restorations, and the epoch tells histories apart.

use std::io::{self, Read, Write};

use clu_proto::codec::{DecodeError, Reader, Writer};
use clu_proto::frame::{self, FrameError};
use clu_proto::{ClusterKind, PAGE_SIZE};
use clu_storage::ClusterDesc;
use clu_sys::buf::PageBuf;
use journal::{Batch, JournalError, Lsn, PageRun, Written};

pub use crate::position::{Heard, Position};
use crate::state::State;

const VERSION: u8 = 5;
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
    #[error("protocol version {0}, this end speaks {VERSION}; run the same release of `pager serve` and `pager backup-server`")]
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

impl Run {
    /// The runs as the journal takes them.
    pub fn page_runs(runs: &[Run]) -> Vec<PageRun<'_>> {
        runs.iter()
            .map(|r| PageRun {
                first_page: r.first_page,
                pages: &r.pages,
            })
            .collect()
    }

    /// The runs copied into one page-aligned batch (which the journal writes by direct I/O
    /// and applies after the commit returns). Fails on a run that is not whole pages.
    pub fn batch(runs: &[Run]) -> Result<Batch, JournalError> {
        let total = runs.iter().map(|r| r.pages.len()).sum();
        let mut buf = PageBuf::zeroed(total);
        let mut at = 0;
        let mut spans = Vec::with_capacity(runs.len());
        for r in runs {
            buf[at..at + r.pages.len()].copy_from_slice(&r.pages);
            spans.push((r.first_page, at, r.pages.len()));
            at += r.pages.len();
        }
        let mut batch = Batch::new(buf);
        for (first_page, at, len) in spans {
            if len % PAGE_SIZE != 0 {
                return Err(JournalError::InvalidRun(format!(
                    "a run of {len} bytes is not whole pages"
                )));
            }
            batch.push(first_page, at, len / PAGE_SIZE)?;
        }
        Ok(batch)
    }
}

/// A connection between sites, read through a buffer and written through `get_mut()`.
pub type Conn = std::io::BufReader<clu_transport::Stream>;

/// A cluster of a full copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CluInfo {
    /// Its number in the volume.
    pub clu: u16,
    /// Its size in pages.
    pub npages: u64,
    /// Its owner's uid.
    pub owner: u32,
    /// Its kind.
    pub kind: ClusterKind,
}

impl CluInfo {
    /// A cluster's number, size, owner and kind, from its descriptor.
    pub fn of(desc: &ClusterDesc) -> CluInfo {
        CluInfo {
            clu: desc.id.clu().0,
            npages: desc.npages,
            owner: desc.owner,
            kind: desc.kind,
        }
    }
}

/// A message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Primary to backup: "I am the primary of volume `uid` at `epoch`", with the settings a
    /// restorer will need (the other backups, `sync`).
    Hello {
        site: String,
        uid: u64,
        epoch: u64,
        name: String,
        backups: Vec<String>,
        sync: u32,
    },
    /// Backup to primary: where its image stands.
    Welcome { position: Position },
    /// Primary to backup: the new images of some pages of a cluster of `npages` pages,
    /// validated at `lsn..end` in the primary's journal, the operation's ordinal in that
    /// journal's run (`seq`, 0 if not known) and what the journal had written when it was
    /// sent: the loss window a backup can report.
    ///
    /// `group_open`: the operation's group (an atomic commit of several clusters) goes on
    /// with the next operation. Such an operation is not answered: the backup stores the
    /// group's operations together when the last one comes, and answers that one. The last
    /// one may have no run (its cluster was destroyed since: only the group's end is told).
    Op {
        epoch: u64,
        lsn: Lsn,
        end: Lsn,
        seq: u64,
        written: Written,
        clu: CluInfo,
        runs: Vec<Run>,
        group_open: bool,
    },
    /// Primary to backup, not answered: what its journal has written: sent by an
    /// asynchronous link while it waits for an acknowledgement, so that the backup knows what
    /// a restoration from it would lose.
    Written { epoch: u64, written: Written },
    /// Backup to primary: every operation before `lsn` is durable here (also answers the
    /// messages of a copy, with the position reached).
    Ack { lsn: Lsn },
    /// Either way: the request is refused, and why (a damaged message, a failure).
    Refused { why: String },
    /// Backup to primary or restorer: a newer epoch is recorded here; the sender was replaced.
    Fenced { why: String },
    /// Start of a full copy: the image is emptied and gets these clusters (zero-filled).
    CopyBegin { epoch: u64, clusters: Vec<CluInfo> },
    /// Pages of a full copy.
    CopyPages {
        epoch: u64,
        clu: u16,
        runs: Vec<Run>,
    },
    /// End of a full copy: the image now stands at `position`.
    CopyEnd { epoch: u64, position: Position },
    /// Restorer to backup: what do you hold of the volume called `name`?
    Inquire { site: String, name: String },
    /// Backup to restorer: its record of the volume (identity, newest epoch, position,
    /// settings).
    Image(State),
    /// Restorer to backup: refuse every primary older than `epoch` from now on.
    Fence { site: String, uid: u64, epoch: u64 },
    /// Restorer to backup: send your image of `uid` (a `CopyBegin`, `CopyPages`, `CopyEnd`
    /// stream); the restorer's `epoch` must be the newest.
    Fetch { site: String, uid: u64, epoch: u64 },
    /// Primary to backup: cluster `clu` was destroyed (cluster numbers are not reused while a
    /// destruction is pending); answered with an `Ack` of the backup's position.
    Destroy { epoch: u64, clu: u16 },
}

impl Msg {
    /// The message's kind, for logs and refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "Hello",
            Msg::Welcome { .. } => "Welcome",
            Msg::Op { .. } => "Op",
            Msg::Written { .. } => "Written",
            Msg::Ack { .. } => "Ack",
            Msg::Refused { .. } => "Refused",
            Msg::Fenced { .. } => "Fenced",
            Msg::CopyBegin { .. } => "CopyBegin",
            Msg::CopyPages { .. } => "CopyPages",
            Msg::CopyEnd { .. } => "CopyEnd",
            Msg::Inquire { .. } => "Inquire",
            Msg::Image(_) => "Image",
            Msg::Fence { .. } => "Fence",
            Msg::Fetch { .. } => "Fetch",
            Msg::Destroy { .. } => "Destroy",
        }
    }
}

impl From<DecodeError> for WireError {
    fn from(e: DecodeError) -> WireError {
        WireError::Malformed(match e {
            DecodeError::Truncated => "truncated",
            DecodeError::Trailing(_) => "bad end of message",
            DecodeError::Invalid(what) => what,
        })
    }
}

/// Writing the fields of this protocol, on the project's codec.
trait Put: Sized {
    fn lsn(self, l: Lsn) -> Self;
    fn text(self, t: &str) -> Self;
    fn texts(self, v: &[String]) -> Self;
    fn position(self, p: Position) -> Self;
    fn written(self, w: Written) -> Self;
    fn clu(self, c: CluInfo) -> Self;
    fn runs(self, runs: &[Run]) -> Self;
}

impl Put for Writer {
    fn lsn(self, l: Lsn) -> Writer {
        self.u64(l.file).u64(l.offset)
    }
    fn text(self, t: &str) -> Writer {
        self.bytes32(t.as_bytes())
    }
    fn texts(self, v: &[String]) -> Writer {
        let n = v.len() as u32;
        v.iter().fold(self.u32(n), |w, t| w.text(t))
    }
    fn position(self, p: Position) -> Writer {
        self.u64(p.epoch).lsn(p.lsn).u8(u8::from(p.complete))
    }
    fn written(self, w: Written) -> Writer {
        self.lsn(w.run).lsn(w.end).u64(w.ops)
    }
    fn clu(self, c: CluInfo) -> Writer {
        self.u16(c.clu).u64(c.npages).u32(c.owner).u8(c.kind as u8)
    }
    fn runs(self, runs: &[Run]) -> Writer {
        let n = runs.len() as u32;
        runs.iter()
            .fold(self.u32(n), |w, r| w.u64(r.first_page).bytes32(&r.pages))
    }
}

/// Reading the fields of this protocol.
trait Get {
    fn lsn(&mut self) -> Result<Lsn, WireError>;
    fn texts(&mut self) -> Result<Vec<String>, WireError>;
    fn position(&mut self) -> Result<Position, WireError>;
    fn written(&mut self) -> Result<Written, WireError>;
    fn clu(&mut self) -> Result<CluInfo, WireError>;
    fn runs(&mut self, npages: u64) -> Result<Vec<Run>, WireError>;
}

impl Get for Reader<'_> {
    fn lsn(&mut self) -> Result<Lsn, WireError> {
        Ok(Lsn::new(self.u64()?, self.u64()?))
    }
    fn texts(&mut self) -> Result<Vec<String>, WireError> {
        let n = self.count(4)?;
        (0..n).map(|_| Ok(self.str32()?)).collect()
    }
    fn position(&mut self) -> Result<Position, WireError> {
        Ok(Position {
            epoch: self.u64()?,
            lsn: self.lsn()?,
            complete: self.flag()?,
        })
    }
    fn written(&mut self) -> Result<Written, WireError> {
        Ok(Written {
            run: self.lsn()?,
            end: self.lsn()?,
            ops: self.u64()?,
        })
    }
    fn clu(&mut self) -> Result<CluInfo, WireError> {
        Ok(CluInfo {
            clu: self.u16()?,
            npages: self.u64()?,
            owner: self.u32()?,
            kind: ClusterKind::from_code(u32::from(self.u8()?))
                .ok_or(WireError::Malformed("unknown cluster kind"))?,
        })
    }
    /// Runs of whole pages, all below page `npages`.
    fn runs(&mut self, npages: u64) -> Result<Vec<Run>, WireError> {
        let n = self.count(12)?;
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            let first_page = self.u64()?;
            let pages = self.bytes32()?;
            if pages.is_empty() || pages.len() % PAGE_SIZE != 0 {
                return Err(WireError::Malformed("a run is not whole pages"));
            }
            let end = first_page
                .checked_add((pages.len() / PAGE_SIZE) as u64)
                .ok_or(WireError::Malformed("a run past the end"))?;
            if end > npages {
                return Err(WireError::Malformed("a run past the cluster's end"));
            }
            runs.push(Run {
                first_page,
                pages: pages.to_vec(),
            });
        }
        Ok(runs)
    }
}

/// A payload being built: the version and the message's kind.
fn start(kind: u8) -> Writer {
    Writer::new().u8(VERSION).u8(kind)
}

impl Msg {
    /// The payload (without the frame header).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Hello {
                site,
                uid,
                epoch,
                name,
                backups,
                sync,
            } => start(1)
                .text(site)
                .u64(*uid)
                .u64(*epoch)
                .text(name)
                .texts(backups)
                .u32(*sync),
            Msg::Welcome { position } => start(2).position(*position),
            Msg::Op {
                epoch,
                lsn,
                end,
                seq,
                written,
                clu,
                runs,
                group_open,
            } => start(if *group_open { 16 } else { 3 })
                .u64(*epoch)
                .lsn(*lsn)
                .lsn(*end)
                .u64(*seq)
                .written(*written)
                .clu(*clu)
                .runs(runs),
            Msg::Written { epoch, written } => start(15).u64(*epoch).written(*written),
            Msg::Ack { lsn } => start(4).lsn(*lsn),
            Msg::Refused { why } => start(5).text(why),
            Msg::CopyBegin { epoch, clusters } => {
                let n = clusters.len() as u32;
                clusters
                    .iter()
                    .fold(start(6).u64(*epoch).u32(n), |w, c| w.clu(*c))
            }
            Msg::CopyPages { epoch, clu, runs } => start(7).u64(*epoch).u16(*clu).runs(runs),
            Msg::CopyEnd { epoch, position } => start(8).u64(*epoch).position(*position),
            Msg::Inquire { site, name } => start(9).text(site).text(name),
            Msg::Image(i) => start(10)
                .u64(i.uid)
                .text(&i.name)
                .u64(i.epoch)
                .position(i.position)
                .u64(i.heard.seq)
                .written(i.heard.written)
                .texts(&i.backups)
                .u32(i.sync)
                .text(&i.creator)
                .text(&i.writer),
            Msg::Fence { site, uid, epoch } => start(11).text(site).u64(*uid).u64(*epoch),
            Msg::Fetch { site, uid, epoch } => start(12).text(site).u64(*uid).u64(*epoch),
            Msg::Destroy { epoch, clu } => start(14).u64(*epoch).u16(*clu),
            Msg::Fenced { why } => start(13).text(why),
        }
        .u8(0xee)
        .finish()
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Msg, WireError> {
        let mut r = Reader::new(payload);
        let v = r.u8()?;
        if v != VERSION {
            return Err(WireError::Version(v));
        }
        let msg = match r.u8()? {
            1 => Msg::Hello {
                site: r.str32()?,
                uid: r.u64()?,
                epoch: r.u64()?,
                name: r.str32()?,
                backups: r.texts()?,
                sync: r.u32()?,
            },
            2 => Msg::Welcome {
                position: r.position()?,
            },
            // 16: an operation whose group goes on (a tag of its own, so that a backup of an
            // earlier release refuses it instead of storing a part of a group).
            tag @ (3 | 16) => {
                let (epoch, lsn, end) = (r.u64()?, r.lsn()?, r.lsn()?);
                let (seq, written) = (r.u64()?, r.written()?);
                let clu = r.clu()?;
                if end <= lsn {
                    return Err(WireError::Malformed(
                        "an operation that ends before it starts",
                    ));
                }
                Msg::Op {
                    epoch,
                    lsn,
                    end,
                    seq,
                    written,
                    clu,
                    runs: r.runs(clu.npages)?,
                    group_open: tag == 16,
                }
            }
            4 => Msg::Ack { lsn: r.lsn()? },
            5 => Msg::Refused { why: r.str32()? },
            6 => {
                let epoch = r.u64()?;
                let n = r.count(15)?;
                let clusters = (0..n).map(|_| r.clu()).collect::<Result<_, _>>()?;
                Msg::CopyBegin { epoch, clusters }
            }
            7 => Msg::CopyPages {
                epoch: r.u64()?,
                clu: r.u16()?,
                runs: r.runs(u64::MAX)?,
            },
            8 => Msg::CopyEnd {
                epoch: r.u64()?,
                position: r.position()?,
            },
            9 => Msg::Inquire {
                site: r.str32()?,
                name: r.str32()?,
            },
            10 => Msg::Image(State {
                uid: r.u64()?,
                name: r.str32()?,
                epoch: r.u64()?,
                position: r.position()?,
                heard: Heard {
                    seq: r.u64()?,
                    written: r.written()?,
                },
                backups: r.texts()?,
                sync: r.u32()?,
                creator: r.str32()?,
                writer: r.str32()?,
            }),
            11 => Msg::Fence {
                site: r.str32()?,
                uid: r.u64()?,
                epoch: r.u64()?,
            },
            12 => Msg::Fetch {
                site: r.str32()?,
                uid: r.u64()?,
                epoch: r.u64()?,
            },
            13 => Msg::Fenced { why: r.str32()? },
            14 => Msg::Destroy {
                epoch: r.u64()?,
                clu: r.u16()?,
            },
            15 => Msg::Written {
                epoch: r.u64()?,
                written: r.written()?,
            },
            _ => return Err(WireError::Malformed("unknown kind")),
        };
        if r.u8()? != 0xee || r.remaining() != 0 {
            return Err(WireError::Malformed("bad end of message"));
        }
        Ok(msg)
    }
}

/// Writes one framed message.
pub fn send(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    frame::send(w, &msg.encode())
}

/// Reads one framed message.
pub fn recv(r: &mut impl Read) -> Result<Msg, WireError> {
    let payload = frame::recv(r, MAX_FRAME).map_err(|e| match e {
        FrameError::Io(e) => WireError::Io(e),
        FrameError::Oversized { len, .. } => WireError::Oversized(len),
        FrameError::Checksum => WireError::Checksum,
    })?;
    Msg::decode(&payload)
}

#[cfg(test)]
mod tests;
