//! The catalog's records as stored in etcd (JSON), and the pure decisions taken on them.

use clu_proto::VolId;
use serde::{Deserialize, Serialize};

use crate::CellError;

/// A site of the cell (thesis: one memory manager per site).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// Its name (`--site`).
    pub name: String,
    /// Where its pager listens for other sites (`--listen`), `HOST:PORT`.
    pub address: String,
}

/// A volume of the cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Its id, unique in the cell.
    pub id: u16,
    /// Its name.
    pub name: String,
    /// The storage service that keeps it (`ssr`, `ssf`).
    pub service: String,
    /// Where: the site whose storage holds it, and the path there.
    pub site: String,
    /// The volume's directory on that site.
    pub location: String,
    /// Immediate restoration, automated (`pager vol create --failover restore`): which sites
    /// may take the volume over when its primary's lease ends, and where they restore it
    /// from. `None`: wait for repair (thesis N1-N3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

/// How a reliable volume is restored by itself when its primary dies or is cut off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The sites allowed to take it over (`--standby`).
    pub standbys: Vec<String>,
    /// Its backup servers, `HOST:PORT`: a standby restores it from the freshest.
    pub backups: Vec<String>,
    /// Commits wait for this many backups (`--sync K`): a takeover must reach and fence
    /// enough backups to meet every acknowledged commit.
    pub sync: u32,
}

/// A site as `pager site list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteStatus {
    /// Its record.
    #[serde(flatten)]
    pub record: SiteRecord,
    /// Whether its lease is alive now.
    pub alive: bool,
    /// The volumes it mounts.
    pub mounts: Vec<u16>,
    /// The clusters whose image it holds (placements), as `vvvv:cccc`.
    pub clusters: Vec<String>,
    /// The shareable clusters it holds a read copy of.
    pub read_copies: Vec<String>,
}

/// A volume with the site that mounts it now, if any, and the mount's fencing epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VolumeStatus {
    /// Its record.
    #[serde(flatten)]
    pub record: VolumeRecord,
    /// The site holding its mount lock.
    pub mounted_by: Option<String>,
    /// The etcd revision at which that mount was taken (the volume's fencing epoch).
    pub epoch: Option<u64>,
}

/// Decodes a JSON record stored at `key`.
pub fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, CellError> {
    serde_json::from_slice(bytes).map_err(|e| CellError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Encodes a record.
pub fn encode<T: Serialize>(record: &T) -> String {
    serde_json::to_string(record).expect("records always serialise")
}

/// The volume id to try next, from the counter's stored value (`None`: never written) and the
/// ids whose records exist: the counter, moved past any id already taken (a record written by
/// hand or by an older counter). Ids are 1..=0xfffe (0 and 0xffff are never handed out).
pub fn next_volume_id(counter: Option<&[u8]>, taken: &[VolId]) -> Result<VolId, CellError> {
    let start = match counter {
        None => 1,
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| CellError::Corrupt {
                key: "next-volume".into(),
                reason: format!("not a number: {:?}", String::from_utf8_lossy(b)),
            })?,
    }
    .max(1);
    (start..0xffff)
        .map(|i| VolId(i as u16))
        .find(|v| !taken.contains(v))
        .ok_or(CellError::Exhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_volume_id_skips_taken_ones_and_refuses_garbage() {
        assert_eq!(next_volume_id(None, &[]).unwrap(), VolId(1));
        assert_eq!(next_volume_id(Some(b"0"), &[]).unwrap(), VolId(1));
        assert_eq!(
            next_volume_id(Some(b"5"), &[VolId(5), VolId(6)]).unwrap(),
            VolId(7)
        );
        assert_eq!(next_volume_id(Some(b"2"), &[VolId(9)]).unwrap(), VolId(2));
        assert!(matches!(
            next_volume_id(Some(b"65535"), &[]),
            Err(CellError::Exhausted)
        ));
        assert!(matches!(
            next_volume_id(Some(b"x1"), &[]),
            Err(CellError::Corrupt { .. })
        ));
        assert!(matches!(
            next_volume_id(Some(&[0xff, 0xfe]), &[]),
            Err(CellError::Corrupt { .. })
        ));
        let all: Vec<VolId> = (1..0xffffu32).map(|i| VolId(i as u16)).collect();
        assert!(matches!(
            next_volume_id(None, &all),
            Err(CellError::Exhausted)
        ));
    }

    #[test]
    fn records_decode_or_name_the_damage() {
        let v = VolumeRecord {
            id: 3,
            name: "data".into(),
            service: "ssr".into(),
            site: "a".into(),
            location: "/srv/clu/vol-0003".into(),
            failover: None,
        };
        let back: VolumeRecord = decode("k", encode(&v).as_bytes()).unwrap();
        assert_eq!(back, v);
        assert!(!encode(&v).contains("failover"), "no field when none");
        let f = VolumeRecord {
            failover: Some(Failover {
                standbys: vec!["b".into()],
                backups: vec!["10.0.0.1:7701".into()],
                sync: 1,
            }),
            ..v.clone()
        };
        let back: VolumeRecord = decode("k", encode(&f).as_bytes()).unwrap();
        assert_eq!(back, f);
        let e = decode::<VolumeRecord>("/clu/x/volumes/0003", b"{\"id\":").unwrap_err();
        assert!(e.to_string().contains("/clu/x/volumes/0003"), "{e}");
    }
}
