//! This site in its cell (`pager serve --catalog`): the storage root's [`CellCatalog`] carried
//! out against the catalog on etcd (`clu-cell`), under this site's lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use clu_cell::{Cell, CellError, Session, VolumeRecord};
use clu_proto::VolId;
use clu_remote::{Holder, Peers, RemoteVolume, Resolve};
use clu_storage::{CellCatalog, StorageError, Volume};
use clu_transport::Transport;
use tracing::info;

/// How this pager joins a cell.
#[derive(Clone, Debug)]
pub struct CellConfig {
    /// The site's name (`--site`).
    pub site: String,
    /// Where this site listens for the others (`--listen`).
    pub listen: String,
    /// The address recorded in the catalog, where the other sites reach this one (`--advertise`;
    /// `listen` unless a relay or a NAT stands between).
    pub advertise: String,
    /// The etcd endpoints (`--catalog`).
    pub endpoints: Vec<String>,
    /// The cell's name: the key prefix in etcd (`--cell`).
    pub cell: String,
    /// The lease's TTL in seconds (`--lease-ttl`): how long after its last renewal a site that
    /// died or was cut off loses its mounts.
    pub lease_ttl: u64,
    /// How long a request to another site may wait for its answer (`--remote-timeout`): a
    /// fault on a page that only a dead site holds fails after this long, never hangs.
    pub remote_timeout: Duration,
}

/// This site's membership of the cell.
pub struct CellSite {
    /// The catalog.
    pub cell: Cell,
    /// The site's lease and mount locks: replaced when the site joins again after losing it
    /// ([`CellSite::rejoin_if_lost`]).
    session: RwLock<Arc<Session>>,
    /// How this site joined (its name, address and TTL), to join again.
    joined_as: (String, String, u64),
    /// The site left the cell (the pager is stopping): it does not join again.
    left: AtomicBool,
    /// The cell's name (`--cell`).
    pub name: String,
    /// How this site reaches the others.
    pub transport: Transport,
    /// See [`CellConfig::remote_timeout`].
    pub remote_timeout: Duration,
    /// What this site exchanged with each other site.
    pub peers: Arc<Peers>,
}

impl CellSite {
    /// Connects to the catalog and joins the cell.
    pub fn join(config: &CellConfig, transport: Transport) -> Result<CellSite, CellError> {
        let cell = Cell::connect(&config.endpoints, &config.cell)?;
        let session = cell.join(&config.site, &config.advertise, config.lease_ttl)?;
        info!(
            site = config.site,
            catalog = cell.endpoints(),
            cell = config.cell,
            "joined the cell"
        );
        Ok(CellSite {
            cell,
            session: RwLock::new(Arc::new(session)),
            joined_as: (
                config.site.clone(),
                config.advertise.clone(),
                config.lease_ttl,
            ),
            left: AtomicBool::new(false),
            name: config.cell.clone(),
            transport,
            remote_timeout: config.remote_timeout,
            peers: Arc::default(),
        })
    }

    /// The site's membership now (its lease and what is bound to it).
    pub fn session(&self) -> Arc<Session> {
        self.session
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Leaves the cell for good (the pager is stopping): revokes the lease, and the site does
    /// not join again.
    pub fn leave(&self) {
        self.left.store(true, Ordering::Release);
        self.session().leave();
    }

    /// Joins the cell again, under a new lease, if the site's lease is lost (the catalog was
    /// unreachable for longer than the lease, or etcd expired it): first revokes the old one,
    /// when etcd answers, so that its live key and locks go at once instead of at its expiry.
    /// What the old lease held stays fenced ([`clu_storage::Fenced`]): volumes mounted
    /// under it must be mounted again, clusters placed under it mapped again. Returns whether
    /// the site joined again; an error while etcd still does not answer (try again later).
    pub fn rejoin_if_lost(&self) -> Result<bool, CellError> {
        let old = self.session();
        if !old.is_lost() || self.left.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.cell.revoke(old.lease());
        let (site, advertise, ttl) = &self.joined_as;
        let session = self.cell.join(site, advertise, *ttl)?;
        if self.left.load(Ordering::Acquire) {
            session.leave();
            return Ok(false);
        }
        info!(
            site,
            old_lease = old.lease(),
            lease = session.lease(),
            "joined the cell again after losing the lease"
        );
        *self.session.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(session);
        Ok(true)
    }

    fn record(&self, vol: VolId, name: &str, service: &str, location: &str) -> VolumeRecord {
        VolumeRecord {
            id: vol.0,
            name: name.to_owned(),
            service: service.to_owned(),
            site: self.session().site().to_owned(),
            location: location.to_owned(),
            failover: None,
        }
    }
}

/// The storage's view of a catalog error.
fn refusal(e: CellError) -> StorageError {
    match e {
        CellError::MountedElsewhere { vol, site } => StorageError::MountedElsewhere { vol, site },
        CellError::PlacedElsewhere { id, site } => StorageError::PlacedElsewhere { id, site },
        CellError::ReadCopies { id, sites } => StorageError::ReadCopies { id, sites },
        other => StorageError::Cell(other.to_string()),
    }
}

impl CellCatalog for CellSite {
    fn allocate(&self, name: &str, service: &str) -> Result<VolId, StorageError> {
        let r = self
            .cell
            .create_volume(name, service, self.session().site(), "")
            .map_err(refusal)?;
        Ok(VolId(r.id))
    }

    fn adopt(
        &self,
        vol: VolId,
        name: &str,
        service: &str,
        location: &str,
    ) -> Result<(), StorageError> {
        self.cell
            .adopt_volume(&self.record(vol, name, service, location))
            .map_err(refusal)
    }

    fn forget(&self, vol: VolId) -> Result<(), StorageError> {
        self.cell.forget_volume(vol).map_err(refusal)
    }

    fn lock_mount(&self, vol: VolId) -> Result<u64, StorageError> {
        self.session().mount(vol).map_err(refusal)
    }

    fn unlock_mount(&self, vol: VolId) -> Result<(), StorageError> {
        self.session().unmount(vol).map_err(refusal)
    }

    fn remote(&self, vol: VolId) -> Result<Option<Arc<dyn Volume>>, StorageError> {
        match self.cell.holder(vol).map_err(refusal)? {
            Some((site, _)) if site == self.session().site() => Ok(None),
            Some(_) => {
                let cell = self.cell.clone();
                let resolve: Resolve = Arc::new(move |vol| {
                    match cell.holder(vol) {
                    Ok(Some((site, address))) => Ok(Holder { site, address }),
                    Ok(None) => Err(StorageError::Remote {
                        site: "-".into(),
                        code: clu_proto::ErrorCode::Unavailable,
                        message: format!("no site of the cell mounts volume {vol} now; mount it somewhere (`pager vol mount`)"),
                    }),
                    Err(e) => Err(refusal(e)),
                }
                });
                Ok(Some(Arc::new(RemoteVolume::new(
                    vol,
                    self.session().site(),
                    self.transport.clone(),
                    resolve,
                    self.remote_timeout,
                    self.peers.clone(),
                ))))
            }
            None => Ok(None),
        }
    }

    fn place(&self, id: clu_proto::ClusterId, read_copy: bool) -> Result<bool, StorageError> {
        if read_copy {
            self.session().place_read(id).map_err(refusal)
        } else {
            self.session().place(id).map_err(refusal)
        }
    }

    fn unplace(&self, id: clu_proto::ClusterId) -> Result<(), StorageError> {
        self.session().unplace(id).map_err(refusal)
    }

    fn placed(&self, id: clu_proto::ClusterId) -> Result<Option<String>, StorageError> {
        self.cell.placed(id).map_err(refusal)
    }

    fn where_is(&self, id: clu_proto::ClusterId) -> Result<Option<String>, StorageError> {
        self.cell.where_is(id).map_err(refusal)
    }

    fn lease(&self) -> Option<u64> {
        let s = self.session();
        (!s.is_lost()).then(|| s.lease() as u64)
    }
}
