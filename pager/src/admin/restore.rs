//! `pager vol restore`: prepare (fence), create from the freshest image, mount, report.

use std::fmt::Write as _;

use crate::daemon::{Manager, Refusal};
use crate::storage::VolumeParams;

/// `pager vol restore`: fence, fetch, mount, report.
pub(super) fn run(m: &Manager, name: &str, from: &str, out: &mut String) -> Result<(), Refusal> {
    let s = &m.storage;
    let plan = crate::goofy::restore::prepare(name, from)?;
    let params = VolumeParams {
        backups: plan.backups.clone(),
        sync: plan.sync,
        restore: Some(plan.clone()),
        ..VolumeParams::default()
    };
    let entry = s.vol_create(name, &params)?;
    let volume = s.vol_mount(entry.vol)?;
    let info = volume.info();
    let (epoch, lsn) = plan.origin;
    let _ = writeln!(
        out,
        "restored volume {} ({}) from {} to LSN {lsn} of epoch {epoch}: every commit that backup acknowledged is in, later ones are lost",
        entry.name, entry.vol, plan.source
    );
    let _ = writeln!(
        out,
        "  {} clusters, {} pages; mounted here as the primary at epoch {}",
        info.clusters, info.used_pages, plan.epoch
    );
    for (addr, p) in &plan.fenced {
        let _ = writeln!(
            out,
            "  fenced {addr} at epoch {} (its image was at LSN {} of epoch {})",
            plan.epoch, p.lsn, p.epoch
        );
    }
    for (addr, why) in &plan.unreachable {
        let _ = writeln!(
            out,
            "  NOT fenced {addr} ({why}): keep the old primary down until it is"
        );
    }
    Ok(())
}
