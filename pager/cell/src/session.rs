//! [`Session`]: a site's membership of the cell: its lease, renewed in the background, and
//! what is bound to it (mount locks, placements).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clu_proto::{ClusterId, VolId};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use crate::cell::{first_get, Cell};
use crate::CellError;

/// The share of the TTL a site gives up as a margin for clock rates: it counts its lease lost
/// `ttl / RATE_MARGIN` early, so that a clock here running up to that much slower than etcd's
/// still stops the site before etcd hands its locks to another.
pub const RATE_MARGIN: u32 = 8;

/// When a lease renewed (its renewal sent) at `renewed` counts as lost here: `ttl` later, less
/// the margin (see [`RATE_MARGIN`]). Pure.
pub fn lost_at(renewed: Duration, ttl: Duration) -> Duration {
    renewed + ttl - ttl / RATE_MARGIN
}

/// What this process knows of its lease: renewed when, gone on the server or not. The site
/// counts its lease lost before `ttl` after the last renewal it *sent* that etcd confirmed
/// ([`lost_at`]; etcd extends the lease from when it handles the renewal, which is later), so
/// the site gives up its locks, and refuses every change, before etcd hands them to another
/// site, as long as its clock runs no more than `1/RATE_MARGIN` slower than etcd's (no
/// synchronisation between the clocks is assumed).
pub(crate) struct LeaseClock {
    base: Instant,
    ttl: Duration,
    /// Nanoseconds after `base` of the last confirmed renewal's sending.
    renewed_ns: AtomicU64,
    /// The server said the lease is gone (expired or revoked).
    gone: AtomicBool,
}

impl LeaseClock {
    pub(crate) fn new(granted_from: Instant, ttl: Duration) -> LeaseClock {
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
        self.base.elapsed() >= lost_at(renewed, self.ttl)
    }
}

/// Renews the lease every third of its TTL; on trouble, keeps trying until the lease would have
/// expired, then marks the session lost.
pub(crate) async fn keep_alive(client: Client, lease: i64, clock: Arc<LeaseClock>, site: String) {
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
    pub(crate) cell: Cell,
    pub(crate) site: String,
    pub(crate) lease: i64,
    pub(crate) clock: Arc<LeaseClock>,
    pub(crate) keeper: Option<tokio::task::JoinHandle<()>>,
    /// The live sites, kept by a watch on `alive/`.
    pub(crate) members: Arc<crate::Members>,
    pub(crate) watcher: tokio::task::JoinHandle<()>,
    pub(crate) revoke_on_drop: bool,
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
        match first_get(&resp) {
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
    /// refused with [`CellError::PlacedElsewhere`] while another site holds it, and with
    /// [`CellError::ReadCopies`] while other sites hold read copies. Returns whether this site
    /// was also the last to hold it before (then an image it kept, clean, is still the stored
    /// one; otherwise another site may have committed meanwhile). Placing again an image this
    /// site holds returns `true`.
    pub fn place(&self, id: ClusterId) -> Result<bool, CellError> {
        let s = &*self.cell.shared;
        let (key, last) = (s.keys.image(id), s.keys.placed(id));
        let (created, current) = self.claim(id, key.clone(), "placing a cluster's image")?;
        // Read copies elsewhere forbid writing. A read copy placed before the put above is
        // seen here; one tried after it saw the put and was refused: never both. Only then is
        // this site recorded as the last writer; on any failure the placement is given back.
        let finish = || -> Result<(), CellError> {
            let others: Vec<String> = self
                .cell
                .readers(id)?
                .into_iter()
                .filter(|r| *r != self.site)
                .collect();
            if !others.is_empty() {
                return Err(CellError::ReadCopies {
                    id,
                    sites: others.join(","),
                });
            }
            let mut c = s.client.clone();
            s.call(
                "recording a cluster's last holder",
                c.put(last.clone(), self.site.clone(), None),
            )?;
            Ok(())
        };
        if let Err(e) = finish() {
            if created {
                if let Err(back) = self.release(key, "backing out of a placement") {
                    tracing::warn!(cluster = %id, "{back}; the placement goes with the lease");
                }
            }
            return Err(e);
        }
        // This site's own read copy, if it had one, is the writable image now.
        if let Err(e) = self.release(
            s.keys.reader(id, &self.site),
            "dropping a read copy's placement",
        ) {
            tracing::warn!(cluster = %id, "{e}; it goes at the last unmap or with the lease");
        }
        Ok(current)
    }

    /// Places a read copy of shareable cluster `id` on this site (F8): refused with
    /// [`CellError::PlacedElsewhere`] while another site holds it for writing; any number of
    /// sites may hold read copies at once. Returns, as [`Session::place`], whether no other
    /// site held it for writing since this site last did (an image kept here is current).
    pub fn place_read(&self, id: ClusterId) -> Result<bool, CellError> {
        let reader = self.cell.shared.keys.reader(id, &self.site);
        Ok(self.claim(id, reader, "placing a read copy")?.1)
    }

    /// While no site holds cluster `id`'s image for writing, puts `key` (this site's name,
    /// bound to its lease) and reads `placed/`; refused with [`CellError::PlacedElsewhere`]
    /// when another site holds it. Returns whether `key` was put (`false`: this site holds
    /// the image already), and whether this site was the last writer (or there was none).
    fn claim(
        &self,
        id: ClusterId,
        key: String,
        op: &'static str,
    ) -> Result<(bool, bool), CellError> {
        self.check()?;
        let s = &*self.cell.shared;
        let image = s.keys.image(id);
        let mut c = s.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                image.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![
                TxnOp::get(s.keys.placed(id), None),
                TxnOp::put(
                    key,
                    self.site.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
            ])
            .or_else(vec![TxnOp::get(image, None)]);
        let resp = s.call(op, c.txn(txn))?;
        // On success, the last writer (this site, another, or none: a new cluster);
        // otherwise the current holder.
        let got = first_get(&resp);
        if resp.succeeded() {
            return Ok((
                true,
                got.map_or(true, |kv| kv.value() == self.site.as_bytes()),
            ));
        }
        match got {
            // This site holds it for writing: its image serves this map too.
            Some(kv) if kv.lease() == self.lease => Ok((false, true)),
            Some(kv) => Err(CellError::PlacedElsewhere {
                id,
                site: String::from_utf8_lossy(kv.value()).into_owned(),
            }),
            None => Err(CellError::Etcd {
                op,
                reason: "the placement changed hands during the call; try again".into(),
            }),
        }
    }

    /// Gives up cluster `id`'s placement on this site, in one transaction: the writable
    /// image if this site holds it, and this site's read copy if it has one.
    pub fn unplace(&self, id: ClusterId) -> Result<(), CellError> {
        let s = &*self.cell.shared;
        let (image, reader) = (s.keys.image(id), s.keys.reader(id, &self.site));
        let mut c = s.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::value(
                image.clone(),
                CompareOp::Equal,
                self.site.clone(),
            )])
            .and_then(vec![
                TxnOp::delete(image, None),
                TxnOp::delete(reader.clone(), None),
            ])
            .or_else(vec![TxnOp::delete(reader, None)]);
        s.call("releasing a cluster's placement", c.txn(txn))?;
        Ok(())
    }

    /// Releases volume `vol`'s mount lock if this site holds it.
    pub fn unmount(&self, vol: VolId) -> Result<(), CellError> {
        let key = self.cell.shared.keys.mount(vol);
        self.release(key, "releasing a mount lock")
    }

    /// Deletes `key` if its value is this site's name (a lock or a placement it holds).
    fn release(&self, key: String, op: &'static str) -> Result<(), CellError> {
        let s = &*self.cell.shared;
        let mut c = s.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.site.clone(),
            )])
            .and_then(vec![TxnOp::delete(key, None)]);
        s.call(op, c.txn(txn))?;
        Ok(())
    }

    /// The cell's live sites as this site's watch sees them (no call to etcd).
    pub fn members(&self) -> Vec<(String, String)> {
        self.members.alive()
    }

    /// Leaves the cell now: revokes the lease (the site's live key and its mount locks go at
    /// once) and stops renewing it. Every later change is refused as after a lost lease.
    pub fn leave(&self) {
        if let Some(k) = &self.keeper {
            k.abort();
        }
        self.watcher.abort();
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
        self.watcher.abort();
        if self.revoke_on_drop {
            self.leave();
        } else if let Some(k) = self.keeper.take() {
            k.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_counts_as_lost_before_etcd_can_expire_it() {
        for ttl_ms in [1000u64, 2000, 10_000, 60_000] {
            let ttl = Duration::from_millis(ttl_ms);
            for renewed_ms in [0u64, 1, 700, 123_456] {
                let renewed = Duration::from_millis(renewed_ms);
                let lost = lost_at(renewed, ttl);
                // etcd expires the lease `ttl` after it handled the renewal, which is after it
                // was sent; a clock here 1/RATE_MARGIN slower still reaches `lost` first.
                let etcd_expiry = renewed + ttl;
                assert!(lost < etcd_expiry);
                let slow = (lost - renewed).as_secs_f64() * (1.0 + 1.0 / f64::from(RATE_MARGIN));
                assert!(slow <= ttl.as_secs_f64() + 1e-9, "{ttl:?} {renewed:?}");
                // Never sooner than needed: most of the lease is still used.
                assert!(lost - renewed >= ttl * (RATE_MARGIN - 1) / RATE_MARGIN);
            }
        }
    }
}
