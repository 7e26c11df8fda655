//! How the cell placed an image on this site (one image per cluster, E1-E2, F8): what a map
//! needs, and how the placement a site holds grows. Pure.

use clu_proto::ClusterKind;

/// How the cell placed an image on this site (one image per cluster, E1-E2, F8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placement {
    /// Not placed: no process here maps it.
    None = 0,
    /// A read copy of a shareable cluster: other sites may hold read copies too.
    ReadCopy = 1,
    /// The one image of the cluster that may be written.
    Write = 2,
}

impl Placement {
    /// What a map needs: a read copy for a read-only map of a shareable cluster, the
    /// writable placement for anything else.
    pub fn needed(kind: ClusterKind, writable: bool) -> Placement {
        if !writable && kind == ClusterKind::Shareable {
            Placement::ReadCopy
        } else {
            Placement::Write
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_read_only_map_of_a_shareable_cluster_is_a_read_copy() {
        for kind in [
            ClusterKind::Protected,
            ClusterKind::Shareable,
            ClusterKind::Temporary,
        ] {
            for writable in [false, true] {
                let p = Placement::needed(kind, writable);
                let copy = kind == ClusterKind::Shareable && !writable;
                assert_eq!(p == Placement::ReadCopy, copy, "{kind:?} {writable}");
                assert_eq!(p == Placement::Write, !copy, "{kind:?} {writable}");
                // A site holding the writable image needs no other placement for any map.
                assert!(Placement::Write >= p);
            }
        }
        assert!(Placement::None < Placement::ReadCopy && Placement::ReadCopy < Placement::Write);
    }
}
