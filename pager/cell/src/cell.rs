//! [`Cell`], the blocking client of the catalog (a site joins it as a [`Session`]).

use std::future::Future;
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
use crate::session::{keep_alive, LeaseClock, Session};
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

pub(crate) struct Shared {
    pub(crate) rt: Runtime,
    pub(crate) client: Client,
    pub(crate) keys: Keys,
    pub(crate) endpoints: String,
}

impl Shared {
    /// Runs one etcd call to completion on the runtime, with a timeout.
    pub(crate) fn call<T, E: std::fmt::Display>(
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

    pub(crate) fn get_prefix(
        &self,
        op: &'static str,
        prefix: &str,
    ) -> Result<Vec<KeyValue>, CellError> {
        let resp = self.get(op, prefix, Some(GetOptions::new().with_prefix()))?;
        Ok(resp.kvs().to_vec())
    }

    /// A read, tried again (up to 3 times in all) when it could not be sent: the client
    /// balances over the members, and right after a member dies a request may still be given
    /// to it. A read has no effect, so trying again is safe.
    pub(crate) fn get(
        &self,
        op: &'static str,
        key: &str,
        opts: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, CellError> {
        let mut tries = 0;
        loop {
            let mut c = self.client.clone();
            match self.call(op, c.get(key, opts.clone())) {
                Err(CellError::Etcd { reason, .. })
                    if tries < 2
                        && (reason.contains("unavailable") || reason_is_connect(&reason)) =>
                {
                    tries += 1;
                    // A plain thread of the pager's: no runtime needed to wait.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }
}

/// Whether an etcd client error says the request was not sent (no connection to the member).
fn reason_is_connect(reason: &str) -> bool {
    reason.contains("tcp connect error") || reason.contains("Connection refused")
}

/// The first key-value a transaction's reads returned, if any.
pub(crate) fn first_get(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

/// The catalog of one cell, on etcd. Cheap to clone.
#[derive(Clone)]
pub struct Cell {
    pub(crate) shared: Arc<Shared>,
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
        // HTTP/2 pings every 2 s, idle or not: a link cut silently ends the lease's renewal
        // stream and the members' watch within seconds (they start again), not never.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
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
        let members = Arc::new(crate::Members::default());
        let watcher = s.rt.spawn(crate::members::watch(
            s.client.clone(),
            s.keys.clone(),
            members.clone(),
            name.to_owned(),
        ));
        Ok(Session {
            cell: self.clone(),
            site: name.to_owned(),
            lease,
            clock,
            members,
            watcher,
            keeper: Some(keeper),
            revoke_on_drop: true,
        })
    }

    /// Revokes lease `lease` (a site's old one, given up): its keys go at once. Best effort:
    /// when etcd does not answer, the lease expires by itself.
    pub fn revoke(&self, lease: i64) {
        let s = &*self.shared;
        let mut c = s.client.clone();
        if let Err(e) = s.call("revoking a lost lease", c.lease_revoke(lease)) {
            tracing::debug!(lease, "{e}; the lease expires by itself");
        }
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
        let readers: Vec<(String, String)> = s
            .get_prefix("listing the read copies", &k.all_readers())?
            .iter()
            .filter_map(|kv| {
                let rest = kv.key_str().ok()?.strip_prefix(&k.all_readers())?;
                let (id, site) = rest.split_once('/')?;
                Some((id.to_owned(), site.to_owned()))
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
                read_copies: readers
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
        let resp = s.get("reading a volume", &key, None)?;
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
            let counter = s.get("reading the volume counter", &next, None)?;
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
                failover: None,
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
        let Some(kv) = first_get(&resp) else {
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

    /// The site holding cluster `id`'s image for writing now, or else the first site holding
    /// a read copy of it, if any (what `clu_Where` answers).
    pub fn where_is(&self, id: ClusterId) -> Result<Option<String>, CellError> {
        if let Some(site) = self.placed(id)? {
            return Ok(Some(site));
        }
        Ok(self.readers(id)?.into_iter().next())
    }

    /// The sites holding read copies of cluster `id`.
    pub fn readers(&self, id: ClusterId) -> Result<Vec<String>, CellError> {
        let s = &*self.shared;
        let prefix = s.keys.readers(id);
        Ok(s.get_prefix("listing a cluster's read copies", &prefix)?
            .iter()
            .filter_map(|kv| Keys::tail(kv.key_str().ok()?, &prefix).map(str::to_owned))
            .collect())
    }

    /// The site holding cluster `id`'s image for writing now, if any.
    pub fn placed(&self, id: ClusterId) -> Result<Option<String>, CellError> {
        let s = &*self.shared;
        let resp = s.get("reading a placement", &s.keys.image(id), None)?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// The site that mounts volume `vol` now and its address, if a live site does.
    pub fn holder(&self, vol: VolId) -> Result<Option<(String, String)>, CellError> {
        let s = &*self.shared;
        let key = s.keys.mount(vol);
        let resp = s.get("reading a mount lock", &key, None)?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let site = kv.value_str().map_err(|e| CellError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let alive = s.keys.alive(site);
        let resp = s.get("reading a site's address", &alive, None)?;
        let Some(addr) = resp.kvs().first() else {
            return Ok(None);
        };
        let addr = addr.value_str().map_err(|e| CellError::Corrupt {
            key: alive,
            reason: e.to_string(),
        })?;
        Ok(Some((site.to_owned(), addr.to_owned())))
    }

    /// Changes volume `vol`'s record with `f` in one transaction (retried when another change
    /// got in between); returns the record written.
    pub fn update_volume(
        &self,
        vol: VolId,
        f: impl Fn(&mut VolumeRecord),
    ) -> Result<VolumeRecord, CellError> {
        let s = &*self.shared;
        let key = s.keys.volume(vol);
        for _ in 0..16 {
            let mut c = s.client.clone();
            let resp = s.get("reading a volume", &key, None)?;
            let Some(kv) = resp.kvs().first() else {
                return Err(CellError::NoSuchVolume(vol));
            };
            let mut record: VolumeRecord = decode(&key, kv.value())?;
            f(&mut record);
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then(vec![TxnOp::put(key.clone(), encode(&record), None)]);
            if s.call("changing a volume's record", c.txn(txn))?
                .succeeded()
            {
                return Ok(record);
            }
        }
        Err(CellError::Etcd {
            op: "changing a volume's record",
            reason: "it kept changing under the call; try again".into(),
        })
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
