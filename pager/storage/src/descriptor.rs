//! Persistent descriptors, as pure encode/decode: the cluster descriptor (H10) and the volume
//! header. Fixed little-endian layouts ending in a CRC-32C; a damaged or foreign file is refused.

use clu_proto::codec::{DecodeError, Reader, Writer};
use clu_proto::{ClusterId, ClusterKind, VolId};

const DESC_MAGIC: [u8; 8] = *b"CLUDESC\0";
const VOL_MAGIC: [u8; 8] = *b"CLUVOLM\0";
const VERSION: u32 = 1;
/// Size of an encoded descriptor file.
pub const DESC_LEN: usize = 512;
/// Size of an encoded volume header file.
pub const VOL_LEN: usize = 512;

/// Usage statistics kept in the descriptor (thesis J1-J6; filled in by the memory manager).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Completed uses (map .. last unmap on the site).
    pub uses: u64,
    /// Total time mapped, in milliseconds, over all uses.
    pub mapped_ms: u64,
    /// Sum over uses of the mean number of processes mapping it.
    pub sharers_sum: u64,
    /// Total pages modified, over all uses.
    pub modified_pages: u64,
    /// Total pages copied to the paging partition, over all uses.
    pub paged_out: u64,
    /// Faults served: [zero-fill, from storage, from the paging partition, write-protect].
    pub faults: [u64; 4],
}

/// Per-use means of a descriptor's statistics, for people and for `--json`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Means {
    /// Mean time mapped per use, milliseconds (J1).
    pub mapped_ms: f64,
    /// Mean number of processes mapping it while mapped (J2).
    pub sharing: f64,
    /// Mean pages modified per use (J3).
    pub modified: f64,
    /// Mean pages copied to the paging partition per use (J4).
    pub paged_out: f64,
}

impl ClusterStats {
    /// The per-use means (zeros before the first use).
    pub fn means(&self) -> Means {
        let s = self;
        let per = |x: u64| {
            if s.uses == 0 {
                0.0
            } else {
                x as f64 / s.uses as f64
            }
        };
        Means {
            mapped_ms: per(s.mapped_ms),
            sharing: if s.mapped_ms == 0 {
                0.0
            } else {
                s.sharers_sum as f64 / s.mapped_ms as f64
            },
            modified: per(s.modified_pages),
            paged_out: per(s.paged_out),
        }
    }
}

const STATS_WORDS: usize = 16; // room reserved in the layout; 9 used
const _: () = assert!(9 <= STATS_WORDS && 40 + 8 * STATS_WORDS <= DESC_LEN - 4);

/// The most uids a cluster's owner may grant access to.
pub const MAX_GRANTS: usize = 16;

/// A right the owner granted (thesis F7): uid `uid` may map the cluster, read-only if `read_only`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The grantee.
    pub uid: u32,
    /// Read-only (`CLU_RDONLY`) rather than read-write.
    pub read_only: bool,
}

/// The grants of a cluster, at most [`MAX_GRANTS`], one per uid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    n: u8,
    list: [Grant; MAX_GRANTS],
}

impl Grants {
    /// The grants, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.list[..self.n as usize].iter()
    }

    /// The grant of `uid`, if any.
    pub fn get(&self, uid: u32) -> Option<Grant> {
        self.iter().find(|g| g.uid == uid).copied()
    }

    /// Grants `uid` (replacing its earlier grant). `false` if the table is full.
    pub fn set(&mut self, g: Grant) -> bool {
        if let Some(e) = self.list[..self.n as usize]
            .iter_mut()
            .find(|e| e.uid == g.uid)
        {
            *e = g;
            return true;
        }
        if self.n as usize == MAX_GRANTS {
            return false;
        }
        self.list[self.n as usize] = g;
        self.n += 1;
        true
    }

    /// Revokes `uid`'s grant; `false` if it had none.
    pub fn revoke(&mut self, uid: u32) -> bool {
        let n = self.n as usize;
        match self.list[..n].iter().position(|e| e.uid == uid) {
            Some(i) => {
                self.list.copy_within(i + 1..n, i);
                self.list[n - 1] = Grant::default();
                self.n -= 1;
                true
            }
            None => false,
        }
    }
}

/// The persistent descriptor of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterDesc {
    /// Its id.
    pub id: ClusterId,
    /// Size in pages.
    pub npages: u64,
    /// The owner's uid.
    pub owner: u32,
    /// What it is for.
    pub kind: ClusterKind,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Usage statistics.
    pub stats: ClusterStats,
    /// The uids the owner granted access to.
    pub grants: Grants,
}

/// Why a descriptor or volume header does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The file has the wrong size.
    #[error("{got} bytes instead of {want}")]
    Length {
        /// Its size.
        got: usize,
        /// The format's.
        want: usize,
    },
    /// Not this kind of file.
    #[error("wrong magic number")]
    Magic,
    /// Damaged.
    #[error("checksum mismatch")]
    Checksum,
    /// Written by another version.
    #[error("format version {0}, this build reads {VERSION}")]
    Version(u32),
    /// A field with an impossible value.
    #[error("{0}")]
    Field(String),
}

impl From<DecodeError> for FormatError {
    fn from(e: DecodeError) -> FormatError {
        FormatError::Field(e.to_string())
    }
}

/// The last four bytes: the CRC-32C of the others.
fn seal(w: Writer, len: usize) -> Vec<u8> {
    let mut w = w.pad_to(len - 4).u32(0);
    let crc = crc32c::crc32c(&w.as_bytes()[..len - 4]);
    w.set_u32(len - 4, crc);
    w.finish()
}

/// Checks size, magic, checksum and version; returns a reader past the version.
fn check<'a>(b: &'a [u8], len: usize, magic: &[u8; 8]) -> Result<Reader<'a>, FormatError> {
    if b.len() != len {
        return Err(FormatError::Length {
            got: b.len(),
            want: len,
        });
    }
    if &b[..8] != magic {
        return Err(FormatError::Magic);
    }
    let stored = u32::from_le_bytes([b[len - 4], b[len - 3], b[len - 2], b[len - 1]]);
    if crc32c::crc32c(&b[..len - 4]) != stored {
        return Err(FormatError::Checksum);
    }
    let mut r = Reader::new(&b[..len - 4]);
    r.skip_to(8)?;
    match r.u32()? {
        VERSION => Ok(r),
        v => Err(FormatError::Version(v)),
    }
}

// Layout: magic[0..8] version[8..12] id[12..16] kind[16..20] owner[20..24] npages[24..32]
//         created[32..40] stats[40..168] grants: count[168..172] (uid, flags)[172..300]
//         ... crc[508..512]. Descriptors written before grants existed have zeros there: none.
const GRANTS_AT: usize = 40 + 8 * STATS_WORDS;
const _: () = assert!(GRANTS_AT + 4 + 8 * MAX_GRANTS <= DESC_LEN - 4);
impl ClusterDesc {
    /// Encodes into a [`DESC_LEN`]-byte buffer.
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.stats;
        let words = [
            s.uses,
            s.mapped_ms,
            s.sharers_sum,
            s.modified_pages,
            s.paged_out,
        ];
        let w = Writer::with(&DESC_MAGIC)
            .u32(VERSION)
            .u32(self.id.0)
            .u32(self.kind as u32)
            .u32(self.owner)
            .u64(self.npages)
            .u64(self.created);
        let w = words
            .iter()
            .chain(s.faults.iter())
            .fold(w, |w, x| w.u64(*x))
            .pad_to(GRANTS_AT)
            .u32(u32::from(self.grants.n));
        let w = self
            .grants
            .iter()
            .fold(w, |w, g| w.u32(g.uid).u32(u32::from(g.read_only)));
        seal(w, DESC_LEN)
    }

    /// Decodes; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<ClusterDesc, FormatError> {
        let mut r = check(b, DESC_LEN, &DESC_MAGIC)?;
        let id = ClusterId(r.u32()?);
        let kind = ClusterKind::from_code(r.u32()?)
            .ok_or_else(|| FormatError::Field("unknown cluster kind".into()))?;
        let owner = r.u32()?;
        let npages = r.u64()?;
        let created = r.u64()?;
        let mut w = [0u64; 9];
        for x in &mut w {
            *x = r.u64()?;
        }
        r.skip_to(GRANTS_AT)?;
        let n = r.u32()? as usize;
        if n > MAX_GRANTS {
            return Err(FormatError::Field(format!(
                "{n} grants, at most {MAX_GRANTS}"
            )));
        }
        let mut grants = Grants::default();
        for i in 0..n {
            let uid = r.u32()?;
            let flags = r.u32()?;
            if flags > 1 {
                return Err(FormatError::Field(format!(
                    "grant {i} has unknown flags {flags:#x}"
                )));
            }
            if !grants.set(Grant {
                uid,
                read_only: flags == 1,
            }) {
                return Err(FormatError::Field("grant table overflow".into()));
            }
        }
        if grants.n as usize != n {
            return Err(FormatError::Field("the same uid granted twice".into()));
        }
        Ok(ClusterDesc {
            grants,
            id,
            kind,
            owner,
            npages,
            created,
            stats: ClusterStats {
                uses: w[0],
                mapped_ms: w[1],
                sharers_sum: w[2],
                modified_pages: w[3],
                paged_out: w[4],
                faults: [w[5], w[6], w[7], w[8]],
            },
        })
    }
}

/// The header of a local volume (`volume.meta`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Its id.
    pub vol: VolId,
    /// Capacity in pages; 0 means no limit.
    pub capacity_pages: u64,
    /// The highest cluster number ever allocated: numbers are not reused while any is left.
    pub last_clu: u16,
    /// Whether any cluster number was ever allocated.
    pub allocated_any: bool,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

// Layout: magic[0..8] version[8..12] vol[12..14] last_clu[14..16] allocated_any[16..20]
//         capacity[24..32] created[32..40] ... crc[508..512]
impl VolumeMeta {
    /// Encodes into a [`VOL_LEN`]-byte buffer.
    pub fn encode(&self) -> Vec<u8> {
        let w = Writer::with(&VOL_MAGIC)
            .u32(VERSION)
            .u16(self.vol.0)
            .u16(self.last_clu)
            .u32(u32::from(self.allocated_any))
            .pad_to(24)
            .u64(self.capacity_pages)
            .u64(self.created);
        seal(w, VOL_LEN)
    }

    /// Decodes; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<VolumeMeta, FormatError> {
        let mut r = check(b, VOL_LEN, &VOL_MAGIC)?;
        let vol = VolId(r.u16()?);
        let last_clu = r.u16()?;
        let allocated_any = r.u32()? != 0;
        r.skip_to(24)?;
        Ok(VolumeMeta {
            vol,
            last_clu,
            allocated_any,
            capacity_pages: r.u64()?,
            created: r.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clu_proto::CluId;
    use proptest::prelude::*;

    /// Recomputes the checksum of an edited encoding.
    fn reseal(b: &mut [u8]) {
        let n = b.len() - 4;
        let c = crc32c::crc32c(&b[..n]);
        b[n..].copy_from_slice(&c.to_le_bytes());
    }

    fn desc() -> ClusterDesc {
        ClusterDesc {
            id: ClusterId::new(VolId(3), CluId(9)),
            npages: 20,
            owner: 1000,
            kind: ClusterKind::Shareable,
            created: 1_700_000_000,
            stats: ClusterStats {
                uses: 1,
                mapped_ms: 2,
                sharers_sum: 3,
                modified_pages: 4,
                paged_out: 5,
                faults: [6, 7, 8, 9],
            },
            grants: {
                let mut g = Grants::default();
                g.set(Grant {
                    uid: 1001,
                    read_only: true,
                });
                g.set(Grant {
                    uid: 0,
                    read_only: false,
                });
                g
            },
        }
    }

    #[test]
    fn grants_are_one_per_uid_bounded_and_revocable() {
        let mut g = Grants::default();
        for uid in 0..MAX_GRANTS as u32 {
            assert!(g.set(Grant {
                uid,
                read_only: false
            }));
        }
        assert!(
            !g.set(Grant {
                uid: 999,
                read_only: false
            }),
            "full"
        );
        assert!(
            g.set(Grant {
                uid: 3,
                read_only: true
            }),
            "a change, not a new entry"
        );
        assert_eq!(
            g.get(3),
            Some(Grant {
                uid: 3,
                read_only: true
            })
        );
        assert!(g.revoke(3));
        assert!(!g.revoke(3));
        assert_eq!(g.get(3), None);
        assert_eq!(g.iter().count(), MAX_GRANTS - 1);
        assert!(g.set(Grant {
            uid: 999,
            read_only: false
        }));
        let mut d = desc();
        d.grants = g;
        assert_eq!(ClusterDesc::decode(&d.encode()), Ok(d));
    }

    #[test]
    fn descriptors_round_trip_and_damage_is_named() {
        let d = desc();
        let b = d.encode();
        assert_eq!(ClusterDesc::decode(&b), Ok(d));
        for at in (0..DESC_LEN).step_by(7) {
            let mut c = b.clone();
            c[at] ^= 0x20;
            assert!(ClusterDesc::decode(&c).is_err(), "flip at {at}");
        }
        assert!(ClusterDesc::decode(&b[..100])
            .unwrap_err()
            .to_string()
            .contains("100 bytes"));
        let mut v = b.clone();
        v[8] = 2;
        reseal(&mut v);
        assert!(ClusterDesc::decode(&v)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        let mut k = b;
        k[16] = 7;
        reseal(&mut k);
        assert_eq!(
            ClusterDesc::decode(&k).unwrap_err().to_string(),
            "unknown cluster kind"
        );
    }

    #[test]
    fn volume_meta_round_trips() {
        let m = VolumeMeta {
            vol: VolId(0x12),
            capacity_pages: 1 << 30,
            last_clu: 65535,
            allocated_any: true,
            created: 5,
        };
        assert_eq!(VolumeMeta::decode(&m.encode()), Ok(m));
        assert!(VolumeMeta::decode(&desc().encode()).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ClusterDesc::decode(&b);
            let _ = VolumeMeta::decode(&b);
        }
    }
}
