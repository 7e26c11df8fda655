//! Who may map a cluster, and how (thesis F2, F3, F7, F8). Pure: a descriptor, a uid and a
//! mode in, a decision out. The uid always comes from the socket (`SO_PEERCRED`), never from
//! anything the client says.
//!
//! | kind | the owner (and root) | a uid the owner granted | anyone else |
//! |---|---|---|---|
//! | protected (default) | read-write or read-only | as granted (a read-only grant refuses read-write) | refused |
//! | shareable | read-write or read-only | as granted | read-only |
//! | temporary | as protected | as protected | as protected |

use clu_proto::{ClusterKind, ErrorCode};

use crate::error::Refusal;
use clu_storage::ClusterDesc;

/// Whether `uid` may map the cluster of `desc`, writable or not. A refusal names the owner, so
/// that the caller can go to the owner (F3).
pub fn may_map(desc: &ClusterDesc, uid: u32, writable: bool) -> Result<(), Refusal> {
    if uid == 0 || uid == desc.owner {
        return Ok(());
    }
    let id = desc.id;
    let owner = desc.owner;
    match (desc.kind, desc.grants.get(uid)) {
        (_, Some(g)) if !(writable && g.read_only) => Ok(()),
        (ClusterKind::Shareable, _) if !writable => Ok(()),
        (_, Some(_)) => Err(Refusal::new(
            ErrorCode::AccessDenied,
            format!("uid {uid} may map cluster {id} read-only only (granted so by its owner, uid {owner})"),
        )),
        (ClusterKind::Shareable, None) => Err(Refusal::new(
            ErrorCode::AccessDenied,
            format!("cluster {id} is shareable: read-only for uid {uid}; its owner, uid {owner}, maps it read-write or may grant it"),
        )),
        (_, None) => Err(Refusal::new(
            ErrorCode::AccessDenied,
            format!("cluster {id} is {} and owned by uid {owner}; uid {uid} has no grant (clu_Grant)", desc.kind.name()),
        )),
    }
}

/// Whether `uid` may change the cluster's rights or kind: its owner, or root.
pub fn may_administer(desc: &ClusterDesc, uid: u32) -> Result<(), Refusal> {
    if uid == 0 || uid == desc.owner {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::AccessDenied,
            format!(
                "only cluster {}'s owner, uid {}, may do this; you are uid {uid}",
                desc.id, desc.owner
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clu_proto::ClusterId;
    use clu_storage::{ClusterStats, Grant, Grants};

    fn desc(kind: ClusterKind, grants: &[(u32, bool)]) -> ClusterDesc {
        let mut g = Grants::default();
        for &(uid, read_only) in grants {
            g.set(Grant { uid, read_only });
        }
        ClusterDesc {
            id: ClusterId(0x0001_0002),
            npages: 1,
            owner: 1000,
            kind,
            created: 0,
            stats: ClusterStats::default(),
            grants: g,
        }
    }

    #[test]
    fn every_kind_uid_and_mode() {
        use ClusterKind::*;
        // (kind, grants, uid, writable, allowed)
        type Case = (ClusterKind, &'static [(u32, bool)], u32, bool, bool);
        let cases: &[Case] = &[
            (Protected, &[], 1000, true, true),
            (Protected, &[], 0, true, true),
            (Protected, &[], 2000, false, false),
            (Protected, &[], 2000, true, false),
            (Protected, &[(2000, false)], 2000, true, true),
            (Protected, &[(2000, true)], 2000, false, true),
            (Protected, &[(2000, true)], 2000, true, false),
            (Protected, &[(2000, false)], 3000, false, false),
            (Shareable, &[], 2000, false, true),
            (Shareable, &[], 2000, true, false),
            (Shareable, &[(2000, false)], 2000, true, true),
            (Shareable, &[], 1000, true, true),
            (Temporary, &[], 2000, false, false),
            (Temporary, &[(2000, false)], 2000, true, true),
        ];
        for &(kind, grants, uid, writable, allowed) in cases {
            let d = desc(kind, grants);
            let r = may_map(&d, uid, writable);
            assert_eq!(
                r.is_ok(),
                allowed,
                "{kind:?} {grants:?} uid {uid} rw {writable}: {r:?}"
            );
            if let Err(e) = r {
                assert_eq!(e.code, ErrorCode::AccessDenied);
                assert!(
                    e.message.contains("uid 1000"),
                    "names the owner: {}",
                    e.message
                );
            }
        }
        assert!(may_administer(&desc(Protected, &[]), 1000).is_ok());
        assert!(may_administer(&desc(Protected, &[]), 0).is_ok());
        assert!(may_administer(&desc(Protected, &[(2000, false)]), 2000).is_err());
    }
}
