//! What can go wrong with the cell's catalog, each with what to do about it.

use clu_proto::VolId;

/// An error of the catalog on etcd.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// No etcd member answered.
    #[error("cannot reach the catalog at {endpoints}: {reason}; check that etcd runs there (`etcdctl --endpoints {endpoints} endpoint health`) and the --catalog address")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The client's error.
        reason: String,
    },
    /// An etcd call failed.
    #[error("the catalog refused {op}: {reason}; run the command again, and if it keeps failing check etcd's quorum (`etcdctl endpoint status`)")]
    Etcd {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        reason: String,
    },
    /// A `--catalog` that is not `etcd://HOST:PORT[,HOST:PORT...]`.
    #[error("bad --catalog {0:?}: write it as etcd://HOST:PORT[,HOST:PORT...]")]
    BadAddress(String),
    /// A site name outside the allowed characters.
    #[error(
        "bad site name {0:?}: use 1 to 64 of a-z, 0-9, '-', '_' and '.', not starting with '.'"
    )]
    BadName(String),
    /// Another pager is alive under this site name.
    #[error("site {0} is already alive in the cell (another pager holds its lease); stop it, or give this pager another --site")]
    SiteAlive(String),
    /// The volume's mount lock is held by another site.
    #[error("volume {vol} is mounted by site {site}; unmount it there first (or wait for that site's lease to expire if it died)")]
    MountedElsewhere {
        /// The volume.
        vol: VolId,
        /// The site holding the lock.
        site: String,
    },
    /// Another site holds the cluster's image.
    #[error("cluster {id}'s image is held on site {site}: run this work there (clu_Where names it), or unmap it there first")]
    PlacedElsewhere {
        /// The cluster.
        id: clu_proto::ClusterId,
        /// The site holding it.
        site: String,
    },
    /// Read copies of the cluster are mapped on other sites: no site may write it meanwhile.
    #[error("cluster {id} has read copies on site(s) {sites}: it cannot be mapped read-write until they unmap it (read copies are not recalled)")]
    ReadCopies {
        /// The cluster.
        id: clu_proto::ClusterId,
        /// The sites holding read copies, comma-separated.
        sites: String,
    },
    /// This site's lease expired: it lost its mounts.
    #[error("site {0} lost its lease on the catalog (etcd unreachable for longer than its TTL): its mounts are gone; it joins again by itself once etcd answers (see `pager status`), then run the command again")]
    LeaseLost(String),
    /// A record in etcd does not decode.
    #[error("the catalog's record at {key} is damaged: {reason}; fix or delete it with etcdctl")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The volume id space is used up (or the counter lost the race too often).
    #[error("no volume id left in the cell (ids 0001 to fffe are all taken, or allocation kept conflicting); delete unused volumes")]
    Exhausted,
    /// The cell gives this id to another volume than the one a site brings.
    #[error("volume id {vol} is `{theirs}` (created on site {site}) in the cell, but this site's storage has `{ours}` under that id; the two volumes were made in different cells: move one away before joining")]
    IdCollision {
        /// The id.
        vol: VolId,
        /// The name the cell records.
        theirs: String,
        /// The site the cell records.
        site: String,
        /// The name the joining site has.
        ours: String,
    },
    /// A volume the catalog does not know.
    #[error("volume {0} is not in the cell's catalog; `pager vol list` shows the cell's volumes")]
    NoSuchVolume(VolId),
}
