//! Immediate restoration, automated (`pager vol create --failover restore --standby SITE`):
//! this site as a standby. A thread looks at the catalog every [`LOOK`]; the pure
//! [`Standby`](clu_cell::failover::Standby) decides when a volume's primary is gone; a
//! takeover is then carried out here:
//!
//! 1. **Election**: take the volume's mount lock in etcd (one transaction: of the standbys
//!    that try at once, one wins; the others see it held and go back to watching). Its etcd
//!    revision is the new epoch's floor, so every party orders the epochs as etcd does.
//! 2. **Fence and choose**: as `pager vol restore` does, from the backups the catalog names;
//!    the epoch is raised on every backup reached. Unless enough backups were fenced to meet
//!    every acknowledged commit ([`clu_goofy::restore::enough_fenced`]), the takeover is
//!    abandoned (the mount lock released) and tried again later.
//! 3. **Restore** the freshest image under the volume's own id (clients' cluster ids do not
//!    change), record this site as the volume's in the catalog, mount it, and serve: the other
//!    sites find it here through the mount lock.
//!
//! No lock is held across any of it (the calls to etcd and to the backups block this thread
//! only).

use std::time::{Duration, Instant};

use clu_cell::failover::{Seen, Standby, TakeOver};
use clu_cell::CellError;
use clu_goofy::restore::enough_fenced;
use clu_goofy::Ssf;
use clu_mm::CacheScope;
use clu_storage::VolumeParams;
use tracing::{error, info, warn};

use super::{goofy_refusal, CellSite, Daemon};

/// How often a standby looks at the catalog.
pub const LOOK: Duration = Duration::from_millis(100);
/// How long after a failed takeover a standby tries again.
const RETRY: Duration = Duration::from_secs(2);

/// The standby thread's body (started by `daemon::spawn_in_cell`).
pub(crate) fn watch(d: &Daemon, site: &CellSite) {
    let me = site.session().site().to_owned();
    let mut standby = Standby::new(&me, RETRY);
    let start = Instant::now();
    let mut last_error = String::new();
    loop {
        std::thread::sleep(LOOK);
        if site.session().is_lost() {
            continue; // out of the cell until it joins again (`rejoin`): no takeover from here
        }
        let volumes = match site.cell.volumes() {
            Ok(v) => v,
            Err(e) => {
                // Once per distinct error, not ten times a second.
                let e = e.to_string();
                if e != last_error {
                    warn!("standby: reading the catalog failed: {e}; no takeover until it is read again");
                    last_error = e;
                }
                continue;
            }
        };
        last_error.clear();
        let seen: Vec<Seen> = volumes
            .iter()
            .filter_map(|v| {
                Some(Seen {
                    vol: clu_proto::VolId(v.record.id),
                    failover: v.record.failover.clone()?,
                    holder: v.mounted_by.clone(),
                })
            })
            .collect();
        for t in standby.step(start.elapsed(), &seen) {
            let Some(v) = volumes.iter().find(|v| v.record.id == t.vol.0) else {
                continue;
            };
            match take_over(d, site, &t, &v.record) {
                Ok(()) => standby.done(t.vol),
                Err(Lost::Election(other)) => {
                    info!(vol = %t.vol, site = other, "standby: another standby took the volume over");
                    standby.done(t.vol);
                }
                Err(Lost::Failed(why)) => {
                    error!(vol = %t.vol, name = v.record.name, from = t.from, "standby: taking the volume over failed: {why}; trying again in {RETRY:?}");
                    standby.failed(t.vol, start.elapsed());
                }
            }
        }
    }
}

/// Why a takeover did not happen.
enum Lost {
    /// Another site holds the mount lock.
    Election(String),
    /// It was tried and failed (the mount lock was given back).
    Failed(String),
}

fn take_over(
    d: &Daemon,
    site: &CellSite,
    t: &TakeOver,
    record: &clu_cell::VolumeRecord,
) -> Result<(), Lost> {
    let began = Instant::now();
    let Some(policy) = &record.failover else {
        return Err(Lost::Failed("the volume has no failover policy".into()));
    };
    let vol = t.vol;
    info!(%vol, name = record.name, from = t.from, "standby: the primary's lease ended; taking the volume over");
    // 1. The election.
    let epoch = match site.session().mount(vol) {
        Ok(e) => e,
        Err(CellError::MountedElsewhere { site, .. }) => return Err(Lost::Election(site)),
        Err(e) => return Err(Lost::Failed(e.to_string())),
    };
    let give_back = |why: String| {
        if let Err(e) = site.session().unmount(vol) {
            warn!(%vol, "giving the mount lock back: {e}");
        }
        Lost::Failed(why)
    };
    // 2. Fence and choose, from the first backup that answers.
    let mut plan = None;
    let mut tried = Vec::new();
    for from in &policy.backups {
        match d.ssf.prepare_restore(&record.name, from, epoch) {
            Ok(p) => {
                plan = Some(p);
                break;
            }
            Err(e) => tried.push(format!("{from}: {e}")),
        }
    }
    let Some(plan) = plan else {
        return Err(give_back(format!(
            "no backup could prepare the restoration ({})",
            tried.join("; ")
        )));
    };
    if let Err(why) = enough_fenced(plan.backups.len(), plan.sync, plan.fenced.len()) {
        return Err(give_back(why));
    }
    // 3. Restore under the volume's id, record it here, mount it.
    let s = d.manager.storage();
    d.manager.drop_cached(CacheScope::Volume(vol));
    let created = s.vol_take_over_by(vol, &record.name, Ssf::NAME, |_, vol, location| {
        let params = VolumeParams {
            name: record.name.clone(),
            ..VolumeParams::default()
        };
        d.ssf
            .create_restored(vol, location, &params, &plan)
            .map_err(goofy_refusal)
    });
    let entry = match created {
        Ok(e) => e,
        Err(r) => return Err(give_back(r.to_string())),
    };
    let me = site.session().site().to_owned();
    if let Err(e) = site.cell.update_volume(vol, |r| {
        r.site = me.clone();
        r.location = entry.location.clone();
    }) {
        warn!(%vol, "recording this site as the volume's in the catalog: {e}; the mount lock still names it");
    }
    if let Err(e) = s.vol_mount(vol) {
        return Err(give_back(e.to_string()));
    }
    info!(
        %vol,
        name = record.name,
        epoch = plan.epoch,
        source = plan.source,
        fenced = plan.fenced.len(),
        not_fenced = ?plan.unreachable,
        took_ms = began.elapsed().as_millis() as u64,
        "standby: took the volume over; this site is its primary now. Every commit the source backup acknowledged is in; {}",
        plan.loss
    );
    Ok(())
}
