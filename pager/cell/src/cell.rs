//! [`Cell`], the blocking client of the catalog, and [`Session`], a site's membership (its
//! lease, renewed in the background, and the mount locks bound to it).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clu_proto::{ClusterId, VolId};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use tokio::runtime::Runtime;

use crate::keys::{check_site_name, Keys};
use crate::records::{decode, encode, next_volume_id};
use crate::{CellError, SiteRecord, SiteStatus, VolumeRecord, VolumeStatus};

/// How long one call to etcd may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoints of `etcd://HOST:PORT[,HOST:PORT...]`.
pub fn parse_catalog(url: &str) -> Result<Vec<String>, CellError> {
    let bad = || CellError::BadAddress(url.to_owned());
    let rest = url.strip_prefix("etcd://").ok_or_else(bad)?;
    let eps: Vec<String> = rest.split(',').map(|s| s.trim().to_owned()).collect();
    for ep in &eps {
        let (host, port) = ep.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
    }
    Ok(eps)
}

struct Shared {
    rt: Runtime,
    client: Client,
    keys: Keys,
    endpoints: String,
}

impl Shared {
    /// Runs one etcd call to completion on the runtime, with a timeout.
    fn call<T, E: std::fmt::Display>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, CellError> {
        // The timer must be made inside the runtime: the async block defers it to there.
        match self
            .rt
            .block_on(async move { tokio::time::timeout(CALL_TIMEOUT, fut).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CellError::Etcd {
                op,
                reason: e.to_string(),
            }),
            Err(_) => Err(CellError::Etcd {
                op,
                reason: format!("no answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    fn get_prefix(&self, op: &'static str, prefix: &str) -> Result<Vec<KeyValue>, CellError> {
        let mut c = self.client.clone();
        let resp = self.call(op, c.get(prefix, Some(GetOptions::new().with_prefix())))?;
        Ok(resp.kvs().to_vec())
    }
}

/// The catalog of one cell, on etcd. Cheap to clone.
#[derive(Clone)]
pub struct Cell {
    shared: Arc<Shared>,
}

impl Cell {
    /// Connects to the etcd members `endpoints` (`HOST:PORT`), for the cell named `cell`.
    /// Fails unless one of them answers.
    pub fn connect(endpoints: &[String], cell: &str) -> Result<Cell, CellError> {
        let joined = endpoints.join(",");
        let unreachable = |reason: String| CellError::Unreachable {
            endpoints: joined.clone(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("starting the client's runtime: {e}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(CALL_TIMEOUT);
        let client = match rt.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options))).await
        }) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("no answer".into())),
        };
        let shared = Shared {
            rt,
            client,
            keys: Keys::new(cell),
            endpoints: joined.clone(),
        };
        // The connection is made lazily: one read proves a member answers.
        let mut c = shared.client.clone();
        shared
            .call(
                "a first read",
                c.get(
                    shared.keys.next_volume(),
                    Some(GetOptions::new().with_count_only()),
                ),
            )
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Cell {
            shared: Arc::new(shared),
        })
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &str {
        &self.shared.endpoints
    }

    /// Joins the cell as site `name`, reachable at `address`, with a lease of `ttl` seconds
    /// renewed in the background. Fails if a site of that name is alive.
    pub fn join(&self, name: &str, address: &str, ttl: u64) -> Result<Session, CellError> {
        check_site_name(name)?;
        let s = &*self.shared;
        let ttl = ttl.clamp(1, 3600);
        let mut c = s.client.clone();
        let granted_from = Instant::now();
        let lease = s
            .call("granting the site's lease", c.lease_grant(ttl as i64, None))?
            .id();
        let alive = s.keys.alive(name);
        let record = encode(&SiteRecord {
            name: name.to_owned(),
            address: address.to_owned(),
        });
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                alive.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![
                TxnOp::put(
                    alive.clone(),
                    address,
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(s.keys.site(name), record, None),
            ]);
        let resp = s.call("joining the cell", c.txn(txn))?;
        if !resp.succeeded() {
            let _ = s.call("revoking an unused lease", c.lease_revoke(lease));
            return Err(CellError::SiteAlive(name.to_owned()));
        }
        let clock = Arc::new(LeaseClock::new(granted_from, Duration::from_secs(ttl)));
        let keeper = s.rt.spawn(keep_alive(
            s.client.clone(),
            lease,
            clock.clone(),
            name.to_owned(),
        ));
        tracing::info!(site = name, lease, ttl, "joined the cell");
        Ok(Session {
            cell: self.clone(),
            site: name.to_owned(),
            lease,
            clock,
            keeper: Some(keeper),
            revoke_on_drop: true,
        })
    }

    /// Every site the cell has known: alive or not, and the volumes each mounts.
    pub fn sites(&self) -> Result<Vec<SiteStatus>, CellError> {
        let s = &*self.shared;
        let k = &s.keys;
        let records = s.get_prefix("listing the sites", &k.sites())?;
        let alive = s.get_prefix("listing the live sites", &k.alives())?;
        let mounts = self.mounts()?;
        let images = s.get_prefix("listing the placements", &k.images())?;
        let images: Vec<(String, String)> = images
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                let id = Keys::tail(key, &k.images())?.to_owned();
                Some((id, String::from_utf8_lossy(kv.value()).into_owned()))
            })
            .collect();
        let alive: Vec<String> = alive
            .iter()
            .filter_map(|kv| {
                kv.key_str()
                    .ok()
                    .and_then(|key| Keys::tail(key, &k.alives()))
            })
            .map(str::to_owned)
            .collect();
        let mut out = Vec::new();
        for kv in &records {
            let key = kv.key_str().unwrap_or_default();
            let record: SiteRecord = decode(key, kv.value())?;
            out.push(SiteStatus {
                alive: alive.contains(&record.name),
                mounts: mounts
                    .iter()
                    .filter(|m| m.1 == record.name)
                    .map(|m| m.0 .0)
                    .collect(),
                clusters: images
                    .iter()
                    .filter(|(_, site)| *site == record.name)
                    .map(|(id, _)| id.clone())
                    .collect(),
                record,
            });
        }
        Ok(out)
    }

    /// The mount locks: volume, site, epoch.
    fn mounts(&self) -> Result<Vec<(VolId, String, u64)>, CellError> {
        let s = &*self.shared;
        let prefix = s.keys.mounts();
        let kvs = s.get_prefix("listing the mounts", &prefix)?;
        let mut out = Vec::new();
        for kv in &kvs {
            let key = kv.key_str().unwrap_or_default();
            let vol = Keys::vol_of(key, &prefix).ok_or_else(|| CellError::Corrupt {
                key: key.to_owned(),
                reason: "not a volume's mount lock".into(),
            })?;
            let site = kv.value_str().map_err(|e| CellError::Corrupt {
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
            out.push((vol, site.to_owned(), kv.create_revision() as u64));
        }
        Ok(out)
    }

    /// Every volume of the cell, with the site that mounts it.
    pub fn volumes(&self) -> Result<Vec<VolumeStatus>, CellError> {
        let s = &*self.shared;
        let kvs = s.get_prefix("listing the volumes", &s.keys.volumes())?;
        let mounts = self.mounts()?;
        let mut out = Vec::new();
        for kv in &kvs {
            let key = kv.key_str().unwrap_or_default();
            let record: VolumeRecord = decode(key, kv.value())?;
            let m = mounts.iter().find(|m| m.0 .0 == record.id);
            out.push(VolumeStatus {
                mounted_by: m.map(|m| m.1.clone()),
                epoch: m.map(|m| m.2),
                record,
            });
        }
        Ok(out)
    }

    /// One volume's record.
    pub fn volume(&self, vol: VolId) -> Result<VolumeRecord, CellError> {
        let s = &*self.shared;
        let key = s.keys.volume(vol);
        let mut c = s.client.clone();
        let resp = s.call("reading a volume", c.get(key.clone(), None))?;
        match resp.kvs().first() {
            Some(kv) => decode(&key, kv.value()),
            None => Err(CellError::NoSuchVolume(vol)),
        }
    }

    /// Allocates a volume id that no other volume of the cell has, and records the volume
    /// under it: the counter and the record are written in one transaction, retried when
    /// another allocation got in between.
    pub fn create_volume(
        &self,
        name: &str,
        service: &str,
        site: &str,
        location: &str,
    ) -> Result<VolumeRecord, CellError> {
        let s = &*self.shared;
        let k = &s.keys;
        let next = k.next_volume();
        for _ in 0..64 {
            let mut c = s.client.clone();
            let counter = s.call("reading the volume counter", c.get(next.clone(), None))?;
            let counter = counter.kvs().first().cloned();
            let taken: Vec<VolId> = s
                .get_prefix("listing the volumes", &k.volumes())?
                .iter()
                .filter_map(|kv| {
                    kv.key_str()
                        .ok()
                        .and_then(|key| Keys::vol_of(key, &k.volumes()))
                })
                .collect();
            let id = next_volume_id(counter.as_ref().map(KeyValue::value), &taken)?;
            let record = VolumeRecord {
                id: id.0,
                name: name.to_owned(),
                service: service.to_owned(),
                site: site.to_owned(),
                // By default where a storage root keeps it: `vol-<id>` under the site's root.
                location: if location.is_empty() {
                    format!("vol-{id}")
                } else {
                    location.to_owned()
                },
            };
            let same_counter = match &counter {
                Some(kv) => {
                    Compare::mod_revision(next.clone(), CompareOp::Equal, kv.mod_revision())
                }
                None => Compare::create_revision(next.clone(), CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when(vec![
                    same_counter,
                    Compare::create_revision(k.volume(id), CompareOp::Equal, 0),
                ])
                .and_then(vec![
                    TxnOp::put(next.clone(), (u32::from(id.0) + 1).to_string(), None),
                    TxnOp::put(k.volume(id), encode(&record), None),
                ]);
            if s.call("allocating a volume id", c.txn(txn))?.succeeded() {
                return Ok(record);
            }
        }
        Err(CellError::Exhausted)
    }
}

impl Cell {
    /// Records a volume a site brings (made before the site joined, or on storage it shares
    /// with the site that made it): creates its record if the cell has none under its id;
    /// accepts one of the same name and service; refuses a different volume under that id.
    pub fn adopt_volume(&self, record: &VolumeRecord) -> Result<(), CellError> {
        let s = &*self.shared;
        let key = s.keys.volume(VolId(record.id));
        let mut c = s.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.clone(), encode(record), None)])
            .or_else(vec![TxnOp::get(key.clone(), None)]);
        let resp = s.call("recording a volume", c.txn(txn))?;
        if resp.succeeded() {
            return Ok(());
        }
        let existing = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let Some(kv) = existing else {
            return Err(CellError::Etcd {
                op: "recording a volume",
                reason: "the record changed during the call; try again".into(),
            });
        };
        let theirs: VolumeRecord = decode(&key, kv.value())?;
        if theirs.name == record.name && theirs.service == record.service {
            return Ok(());
        }
        Err(CellError::IdCollision {
            vol: VolId(record.id),
            theirs: theirs.name,
            site: theirs.site,
            ours: record.name.clone(),
        })
    }

    /// The site holding cluster `id`'s image now, if any.
    pub fn placed(&self, id: ClusterId) -> Result<Option<String>, CellError> {
        let s = &*self.shared;
        let mut c = s.client.clone();
        let resp = s.call("reading a placement", c.get(s.keys.image(id), None))?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// The site that mounts volume `vol` now and its address, if a live site does.
    pub fn holder(&self, vol: VolId) -> Result<Option<(String, String)>, CellError> {
        let s = &*self.shared;
        let mut c = s.client.clone();
        let key = s.keys.mount(vol);
        let resp = s.call("reading a mount lock", c.get(key.clone(), None))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let site = kv.value_str().map_err(|e| CellError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let alive = s.keys.alive(site);
        let resp = s.call("reading a site's address", c.get(alive.clone(), None))?;
        let Some(addr) = resp.kvs().first() else {
            return Ok(None);
        };
        let addr = addr.value_str().map_err(|e| CellError::Corrupt {
            key: alive,
            reason: e.to_string(),
        })?;
        Ok(Some((site.to_owned(), addr.to_owned())))
    }

    /// Deletes a volume's record (and its mount lock, if one was left).
    pub fn forget_volume(&self, vol: VolId) -> Result<(), CellError> {
        let s = &*self.shared;
        let mut c = s.client.clone();
        let txn = Txn::new().and_then(vec![
            TxnOp::delete(s.keys.volume(vol), None),
            TxnOp::delete(s.keys.mount(vol), None),
        ]);
        s.call("deleting a volume's record", c.txn(txn))?;
        Ok(())
    }
}

/// What this process knows of its lease: renewed when, gone on the server or not. The site
/// counts its lease lost `ttl` after the last renewal it *sent* that etcd confirmed (etcd
/// extends the lease from when it handles the renewal, which is later), so the site gives up
/// its locks no later than etcd hands them to another site (clocks run at the same rate on
/// both; no synchronisation between them is assumed).
struct LeaseClock {
    base: Instant,
    ttl: Duration,
    /// Nanoseconds after `base` of the last confirmed renewal's sending.
    renewed_ns: AtomicU64,
    /// The server said the lease is gone (expired or revoked).
    gone: AtomicBool,
}

impl LeaseClock {
    fn new(granted_from: Instant, ttl: Duration) -> LeaseClock {
        LeaseClock {
            base: granted_from,
            ttl,
            renewed_ns: AtomicU64::new(0),
            gone: AtomicBool::new(false),
        }
    }

    fn renewed(&self, sent: Instant) {
        let ns = sent.saturating_duration_since(self.base).as_nanos() as u64;
        self.renewed_ns.fetch_max(ns, Ordering::AcqRel);
    }

    fn is_lost(&self) -> bool {
        if self.gone.load(Ordering::Acquire) {
            return true;
        }
        let renewed = Duration::from_nanos(self.renewed_ns.load(Ordering::Acquire));
        self.base.elapsed() >= renewed + self.ttl
    }
}

/// Renews the lease every third of its TTL; on trouble, keeps trying until the lease would have
/// expired, then marks the session lost.
async fn keep_alive(client: Client, lease: i64, clock: Arc<LeaseClock>, site: String) {
    let period = clock.ttl / 3;
    'outer: loop {
        let mut c = client.clone();
        let stream = tokio::time::timeout(
            period.max(Duration::from_millis(100)),
            c.lease_keep_alive(lease),
        )
        .await;
        let (mut keeper, mut stream) = match stream {
            Ok(Ok(pair)) => pair,
            _ => {
                if clock.is_lost() {
                    break 'outer;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            let renewed = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(period.max(Duration::from_millis(100)), renewed).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => clock.renewed(sent),
                // The lease is gone on the server: it expired or was revoked.
                Ok(Ok(Some(_))) => {
                    clock.gone.store(true, Ordering::Release);
                    break 'outer;
                }
                _ => {
                    if clock.is_lost() {
                        break 'outer;
                    }
                    continue 'outer; // a new stream
                }
            }
            tokio::time::sleep(period).await;
        }
    }
    clock.gone.store(true, Ordering::Release);
    tracing::error!(
        site,
        lease,
        "the site's lease on the catalog is lost: its mounts are gone"
    );
}

/// A site's membership of the cell: its lease and what is bound to it. Dropping it leaves the
/// cell (revokes the lease: the site's live key and mount locks go at once).
pub struct Session {
    cell: Cell,
    site: String,
    lease: i64,
    clock: Arc<LeaseClock>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    revoke_on_drop: bool,
}

impl Session {
    /// The site's name.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The site's lease id in etcd.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Whether the lease was lost (not renewed within its TTL): the mounts are gone.
    pub fn is_lost(&self) -> bool {
        self.clock.is_lost()
    }

    fn check(&self) -> Result<(), CellError> {
        if self.is_lost() {
            return Err(CellError::LeaseLost(self.site.clone()));
        }
        Ok(())
    }

    /// Takes volume `vol`'s mount lock for this site; returns the mount's fencing epoch (the
    /// etcd revision that created the lock). Mounting again a volume this site holds returns
    /// the same epoch.
    pub fn mount(&self, vol: VolId) -> Result<u64, CellError> {
        self.check()?;
        let s = &*self.cell.shared;
        let key = s.keys.mount(vol);
        let mut c = s.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key.clone(),
                self.site.clone(),
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else(vec![TxnOp::get(key.clone(), None)]);
        let resp = s.call("taking a mount lock", c.txn(txn))?;
        if resp.succeeded() {
            let epoch = resp.header().map_or(0, |h| h.revision()) as u64;
            tracing::info!(site = self.site, %vol, epoch, "mounted in the cell");
            return Ok(epoch);
        }
        let holder = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        match holder {
            Some(kv) if kv.lease() == self.lease => Ok(kv.create_revision() as u64),
            Some(kv) => Err(CellError::MountedElsewhere {
                vol,
                site: String::from_utf8_lossy(kv.value()).into_owned(),
            }),
            // Released between the two halves of the transaction: try again once.
            None => Err(CellError::Etcd {
                op: "taking a mount lock",
                reason: "the lock changed hands during the call; try again".into(),
            }),
        }
    }

    /// Places cluster `id`'s image on this site (one image per cluster in the cell, E1-E2):
    /// refused with [`CellError::PlacedElsewhere`] while another site holds it. Returns whether
    /// this site was also the last to hold it before (then an image it kept, clean, is still
    /// the stored one; otherwise another site may have committed meanwhile). Placing again an
    /// image this site holds returns `true`.
    pub fn place(&self, id: ClusterId) -> Result<bool, CellError> {
        self.check()?;
        let s = &*self.cell.shared;
        let (key, last) = (s.keys.image(id), s.keys.placed(id));
        let mut c = s.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![
                TxnOp::get(last.clone(), None),
                TxnOp::put(
                    key.clone(),
                    self.site.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                TxnOp::put(last, self.site.clone(), None),
            ])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = s.call("placing a cluster's image", c.txn(txn))?;
        let got = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
            _ => None,
        });
        if resp.succeeded() {
            // The previous holder, if any: this site, or another (or none: a new cluster).
            let previous = got.flatten();
            return Ok(previous.map_or(true, |kv| kv.value() == self.site.as_bytes()));
        }
        match got.flatten() {
            Some(kv) if kv.lease() == self.lease => Ok(true),
            Some(kv) => Err(CellError::PlacedElsewhere {
                id,
                site: String::from_utf8_lossy(kv.value()).into_owned(),
            }),
            None => Err(CellError::Etcd {
                op: "placing a cluster's image",
                reason: "the placement changed hands during the call; try again".into(),
            }),
        }
    }

    /// Gives up cluster `id`'s placement if this site holds it.
    pub fn unplace(&self, id: ClusterId) -> Result<(), CellError> {
        let s = &*self.cell.shared;
        let key = s.keys.image(id);
        let mut c = s.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.site.clone(),
            )])
            .and_then(vec![TxnOp::delete(key, None)]);
        s.call("releasing a cluster's placement", c.txn(txn))?;
        Ok(())
    }

    /// Releases volume `vol`'s mount lock if this site holds it.
    pub fn unmount(&self, vol: VolId) -> Result<(), CellError> {
        let s = &*self.cell.shared;
        let key = s.keys.mount(vol);
        let mut c = s.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.site.clone(),
            )])
            .and_then(vec![TxnOp::delete(key, None)]);
        s.call("releasing a mount lock", c.txn(txn))?;
        Ok(())
    }

    /// Leaves the cell now: revokes the lease (the site's live key and its mount locks go at
    /// once) and stops renewing it. Every later change is refused as after a lost lease.
    pub fn leave(&self) {
        if let Some(k) = &self.keeper {
            k.abort();
        }
        if self.clock.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        let s = &*self.cell.shared;
        let mut c = s.client.clone();
        match s.call("leaving the cell", c.lease_revoke(self.lease)) {
            Ok(_) => tracing::info!(site = self.site, "left the cell"),
            Err(e) => {
                tracing::warn!(site = self.site, error = %e, "leaving the cell failed; the site's lease expires by itself")
            }
        }
    }

    /// Stops renewing the lease without revoking it, as a crashed pager would: the site stays
    /// alive in etcd until its TTL runs out. For tests of expiry.
    pub fn abandon(mut self) {
        self.revoke_on_drop = false;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.revoke_on_drop {
            self.leave();
        } else if let Some(k) = self.keeper.take() {
            k.abort();
        }
    }
}
