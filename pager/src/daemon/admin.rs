//! Executing the administration commands for a connection (the grammar is `crate::admin`,
//! the output `crate::render`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use clu_goofy::{ReliableSpec, Ssf};
use clu_mm::{CacheScope, Refusal, MAX_CLUSTER_PAGES};
use clu_proto::ErrorCode;
use clu_storage::{ClusterDesc, VolumeParams};

use super::{goofy_refusal, Daemon};
use crate::admin::{
    self, AdminCommand, CacheCommand, CluCommand, FailoverPolicy, SiteCommand, VolCommand,
};
use crate::render::{self, ReliableView, RestoreView, Status};

fn denied(what: &str) -> Refusal {
    Refusal::new(
        ErrorCode::AccessDenied,
        format!("{what} is reserved to root and to the pager's own user; run it with sudo, or as that user"),
    )
}

/// Runs an administration command for a client of uid `uid`; returns its text.
/// This site's cell, or a refusal saying the pager is in none.
fn in_cell(d: &Daemon) -> Result<&super::cell::CellSite, Refusal> {
    d.cell.as_deref().ok_or_else(|| {
        Refusal::invalid(
            "this pager is a site on its own: start it with `pager serve --catalog etcd://HOST:PORT --site NAME --listen HOST:PORT` to join a cell",
        )
    })
}

fn cell_refusal(e: clu_cell::CellError) -> Refusal {
    Refusal::new(ErrorCode::Unavailable, e.to_string())
}

/// `pager vol list`: this root's volumes; in a cell, the cell's, with this root's figures for
/// those mounted here.
fn vol_list(d: &Daemon) -> Result<String, Refusal> {
    let local = d.manager.storage().volumes();
    match &d.cell {
        None => Ok(render::volume_list(&local)),
        Some(site) => {
            let cell = site.cell.volumes().map_err(cell_refusal)?;
            Ok(render::cell_volume_list(&cell, &local))
        }
    }
}

pub(super) fn execute(d: &Daemon, uid: u32, words: &[String]) -> Result<String, Refusal> {
    // The CLI parsed these words with the same definitions: a refusal here means the CLI and
    // the daemon are not the same version.
    let cmd = admin::parse(words).map_err(|_| {
        Refusal::invalid(format!(
            "the running pager does not understand `{}`: it is another version than this `pager`; use the binary of the running daemon, or restart `pager serve` with this one",
            words.join(" ")
        ))
    })?;
    let admin = uid == 0 || uid == nix::unistd::geteuid().as_raw();
    match cmd {
        AdminCommand::Status { json } => {
            let s = status(d);
            Ok(if json { s.json() } else { s.text() })
        }
        AdminCommand::Stats { json } => {
            let s = d.manager.storage();
            let mut all: Vec<ClusterDesc> = s
                .volumes()
                .iter()
                .filter_map(|v| s.volume(v.entry.vol).ok())
                .flat_map(|v| v.clu_list())
                .collect();
            all.sort_by_key(|d| d.id);
            Ok(if json {
                render::stats_json(&all)
            } else {
                render::stats_table(&all)
            })
        }
        AdminCommand::Vol(VolCommand::List) => vol_list(d),
        AdminCommand::Site(SiteCommand::List { json }) => {
            let site = in_cell(d)?;
            let sites = site.cell.sites().map_err(cell_refusal)?;
            Ok(if json {
                render::json(&sites)
            } else {
                render::site_list(&sites)
            })
        }
        AdminCommand::Vol(_) if !admin => Err(denied("volume administration")),
        AdminCommand::Vol(v) => volume(d, v),
        AdminCommand::Clu(c) => cluster(d, uid, admin, c),
        AdminCommand::Cache(_) if !admin => Err(denied("dropping the site cache")),
        AdminCommand::Cache(CacheCommand::Drop { id }) => {
            let scope = id.map_or(CacheScope::All, CacheScope::Cluster);
            let n = d.manager.drop_cached(scope);
            Ok(format!("dropped {n} cached image(s)\n"))
        }
    }
}

/// What `pager status` shows, gathered from the manager, the site and the reliable service.
pub(crate) fn status(d: &Daemon) -> Status {
    let m = &d.manager;
    let site = m.site();
    let s = &site.stats;
    let c = |c: &clu_mm::site::Counter| c.get();
    let images = m.images();
    Status {
        pid: std::process::id(),
        uptime_secs: render::milli(d.started.elapsed().as_secs_f64()),
        root: m.storage().root().display().to_string(),
        socket: d.socket.display().to_string(),
        cell: d.cell.as_ref().map(|c| render::status::CellView {
            site: c.session().site().to_owned(),
            cell: c.name.clone(),
            catalog: c.cell.endpoints().to_owned(),
            lease_alive: !c.session().is_lost(),
            sites_alive: c.session().members().into_iter().map(|(s, _)| s).collect(),
            remote_sites: c
                .peers
                .views()
                .into_iter()
                .map(|p| render::status::RemoteSiteView {
                    site: p.site,
                    requests: p.requests,
                    failures: p.failures,
                    last_rtt_us: p.last_rtt_us,
                    mean_rtt_us: p.mean_rtt_us,
                    bytes_sent: p.bytes_sent,
                    bytes_received: p.bytes_received,
                    reads: p.reads,
                    pages_read: p.pages_read,
                    commits: p.commits,
                })
                .collect(),
        }),
        connections: render::status::Connections {
            live: d.live_connections.load(Ordering::Relaxed),
            total: d.connections.get(),
        },
        resident_pages: site.budget.resident(),
        budget_pages: site.budget.limit(),
        paging_slots: site.paging.in_use(),
        paging_server: d.memory.as_ref().map(|m| {
            let f = m.figures();
            render::status::PagingServerView {
                address: f.address,
                server: f.server,
                stored: f.stored,
                loaded: f.loaded,
                failures: f.failures,
            }
        }),
        faults: render::status::Faults {
            missing: c(&s.missing_faults),
            minor: c(&s.minor_faults),
            write_protect: c(&s.wp_faults),
            refused: c(&s.poisoned),
        },
        supplies: render::status::Supplies {
            zero: c(&s.zero_fills),
            storage: c(&s.storage_reads),
            paging: c(&s.paging_reads),
            prefetched: c(&s.prefetched),
        },
        evictions: render::status::Evictions {
            clean: c(&s.evicted_clean),
            dirty: c(&s.evicted_dirty),
        },
        commits: render::status::Commits {
            count: c(&s.commits),
            pages: c(&s.committed_pages),
            aborts: c(&s.aborts),
        },
        fault_latency: render::status::LatencyView::sum(&s.fault_latency),
        volumes: m
            .storage()
            .volumes()
            .into_iter()
            .map(|v| render::status::VolumeView {
                vol: v.entry.vol.to_string(),
                name: v.entry.name,
                service: v.entry.service.to_string(),
                mounted: v.mounted.is_some(),
            })
            .collect(),
        reliable_volumes: {
            let names: std::collections::HashMap<_, _> = m
                .storage()
                .volumes()
                .into_iter()
                .map(|v| (v.entry.vol, v.entry.name))
                .collect();
            d.ssf
                .replication()
                .iter()
                .map(|(vol, r)| {
                    let mut v = ReliableView::new(*vol, r);
                    if let Some(name) = names.get(vol) {
                        v.name = name.clone();
                    }
                    v
                })
                .collect()
        },
        restoring: d
            .ssf
            .restorations()
            .into_iter()
            .map(|r| RestoreView {
                name: r.name,
                source: r.source,
                received_pages: r.received_pages,
                total_pages: r.total_pages,
            })
            .collect(),
        clusters: images
            .iter()
            .filter(|i| !i.cached)
            .map(Into::into)
            .collect(),
        cached: images.iter().filter(|i| i.cached).map(Into::into).collect(),
    }
}

fn volume(d: &Daemon, cmd: VolCommand) -> Result<String, Refusal> {
    let s = d.manager.storage();
    let mut out = String::new();
    match cmd {
        VolCommand::List => out = render::volume_list(&s.volumes()),
        VolCommand::Create {
            name,
            capacity,
            no_mount,
            backups,
            sync,
            failover,
            standbys,
        } => {
            let automated = failover == FailoverPolicy::Restore;
            if automated {
                check_failover(d, &backups, sync, &standbys)?;
            } else if !standbys.is_empty() {
                return Err(Refusal::invalid(
                    "--standby names the sites that take a volume over with --failover restore; add it, or drop --standby",
                ));
            }
            let params = VolumeParams {
                capacity_pages: capacity.capacity_pages,
                ..VolumeParams::default()
            };
            let entry = if backups.is_empty() {
                s.vol_create(&name, &params)?
            } else {
                let spec = ReliableSpec {
                    backups: backups.clone(),
                    sync,
                };
                s.vol_create_by(&name, Ssf::NAME, |_, vol, location| {
                    let params = VolumeParams {
                        name: name.clone(),
                        ..params.clone()
                    };
                    d.ssf
                        .create(vol, location, &params, &spec)
                        .map_err(goofy_refusal)
                })?
            };
            if let (true, Some(cell)) = (automated, &d.cell) {
                let policy = clu_cell::Failover {
                    standbys: standbys.clone(),
                    backups: backups.clone(),
                    sync,
                };
                if let Err(e) = cell
                    .cell
                    .update_volume(entry.vol, |r| r.failover = Some(policy.clone()))
                {
                    return Err(Refusal::new(
                        ErrorCode::Io,
                        format!("volume {} was created, but its failover policy could not be recorded in the catalog: {e}; delete it (`pager vol delete {}`) and create it again once etcd answers", entry.name, entry.name),
                    ));
                }
            }
            if !no_mount {
                s.vol_mount(entry.vol)?;
            }
            let mounted = if no_mount { "" } else { ", mounted" };
            let _ = writeln!(
                out,
                "created volume {} ({}){mounted}",
                entry.name, entry.vol
            );
        }
        VolCommand::Restore { name, from, force } => restore(d, &name, &from, force, &mut out)?,
        VolCommand::Mount { vol } => {
            let entry = s.find(&vol)?;
            d.manager.drop_cached(CacheScope::Volume(entry.vol));
            s.vol_mount(entry.vol)?;
            let _ = writeln!(out, "mounted volume {} ({})", entry.name, entry.vol);
        }
        VolCommand::Unmount { vol } => {
            let entry = s.find(&vol)?;
            if d.manager.volume_in_use(entry.vol) {
                return Err(Refusal::new(
                    ErrorCode::Busy,
                    format!(
                        "volume {} has mapped clusters; `pager status` lists them: end or unmap their processes first",
                        entry.name
                    ),
                ));
            }
            d.manager.drop_cached(CacheScope::Volume(entry.vol));
            s.vol_unmount(entry.vol)?;
            let _ = writeln!(out, "unmounted volume {} ({})", entry.name, entry.vol);
        }
        VolCommand::Resize { vol, capacity } => {
            let entry = s.find(&vol)?;
            s.vol_resize(entry.vol, capacity.capacity_pages)?;
            let _ = writeln!(
                out,
                "volume {} capacity is now {} pages",
                entry.name, capacity.capacity_pages
            );
        }
        VolCommand::Delete { vol, force } => {
            let entry = s.find(&vol)?;
            s.vol_delete(entry.vol, force)?;
            let _ = writeln!(out, "deleted volume {} ({})", entry.name, entry.vol);
        }
    }
    Ok(out)
}

/// What `--failover restore` needs: a cell, backups, standbys that are sites of the cell.
fn check_failover(
    d: &Daemon,
    backups: &[String],
    sync: u32,
    standbys: &[String],
) -> Result<(), Refusal> {
    let Some(cell) = &d.cell else {
        return Err(Refusal::invalid(
            "--failover restore needs a cell: start the pager with --catalog etcd://... so that a standby can see the primary go",
        ));
    };
    if backups.is_empty() {
        return Err(Refusal::invalid(
            "--failover restore needs a reliable volume: add --backup HOST:PORT (a standby restores it from its backups)",
        ));
    }
    if sync as usize > backups.len() {
        return Err(Refusal::invalid(format!(
            "--sync {sync} waits for more backups than the {n} named: lower --sync to at most {n}, or add --backup HOST:PORT",
            n = backups.len()
        )));
    }
    if standbys.is_empty() {
        return Err(Refusal::invalid(
            "--failover restore needs at least one --standby SITE to take the volume over",
        ));
    }
    let session = cell.session();
    let me = session.site();
    for s in standbys {
        clu_cell::keys::check_site_name(s).map_err(|e| Refusal::invalid(e.to_string()))?;
    }
    // This site may be named too (it takes the volume back after another site served it);
    // another site must be.
    if standbys.iter().all(|s| s == me) {
        return Err(Refusal::invalid(
            "--standby names only this site, the volume's primary: name another site that may take it over",
        ));
    }
    Ok(())
}

/// `pager vol restore`: fence, fetch, mount, report.
fn restore(
    d: &Daemon,
    name: &str,
    from: &str,
    force: bool,
    out: &mut String,
) -> Result<(), Refusal> {
    let s = d.manager.storage();
    let plan = d
        .ssf
        .prepare_restore(name, from, 0)
        .map_err(goofy_refusal)?;
    // The backups reached are fenced by now (at the new epoch), whatever is decided here: the
    // old primary cannot use them any more.
    if let Err(why) =
        clu_goofy::restore::enough_fenced(plan.backups.len(), plan.sync, plan.fenced.len())
    {
        if !force {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                format!("not restored: {why}; bring the other backups back and try again, or pass --force if they are lost for good (unreachable: {})", plan.unreachable.iter().map(|(a, why)| format!("{a} ({why})")).collect::<Vec<_>>().join(", ")),
            ));
        }
        let _ = writeln!(out, "  --force: {why}");
    }
    let entry = s.vol_create_by(name, Ssf::NAME, |_, vol, location| {
        let params = VolumeParams {
            name: name.to_string(),
            ..VolumeParams::default()
        };
        d.ssf
            .create_restored(vol, location, &params, &plan)
            .map_err(goofy_refusal)
    })?;
    d.manager.drop_cached(CacheScope::Volume(entry.vol));
    let volume = s.vol_mount(entry.vol)?;
    let info = volume.info();
    let _ = writeln!(
        out,
        "restored volume {} ({}) from {}: every commit that backup acknowledged is in; {}",
        entry.name, entry.vol, plan.source, plan.loss
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

fn cluster(d: &Daemon, uid: u32, admin: bool, cmd: CluCommand) -> Result<String, Refusal> {
    let m = &d.manager;
    let s = m.storage();
    let owner_ok = |desc: &ClusterDesc| admin || desc.owner == uid;
    let mut out = String::new();
    match cmd {
        CluCommand::Create { vol, pages, kind } => {
            let entry = s.find(&vol)?;
            if pages == 0 || pages > MAX_CLUSTER_PAGES {
                return Err(Refusal::invalid(format!(
                    "--pages must be 1 to {MAX_CLUSTER_PAGES}"
                )));
            }
            let desc = s.clu_create(entry.vol, pages, uid, kind)?;
            let _ = writeln!(out, "{}", desc.id);
        }
        CluCommand::List { vol } => {
            let entry = s.find(&vol)?;
            out = render::cluster_list(&s.volume(entry.vol)?.clu_list());
        }
        CluCommand::Info { id, json: false } => {
            out = render::cluster_info(&s.clu_get_desc(id)?, Some(m.mappers(id)))
        }
        CluCommand::Info { id, json: true } => {
            out = render::cluster_info_json(&s.clu_get_desc(id)?)
        }
        CluCommand::Resize { id, .. } | CluCommand::Destroy { id } if m.is_mapped(id) => {
            return Err(Refusal::new(
                ErrorCode::Busy,
                format!("cluster {id} is mapped; a mapping process resizes it with clu_Resize, and it can be destroyed once unmapped"),
            ));
        }
        CluCommand::Resize { id, add } => {
            let desc = s.clu_get_desc(id)?;
            if !owner_ok(&desc) {
                return Err(denied("resizing another user's cluster"));
            }
            let total = desc.npages.saturating_add(add);
            if total > MAX_CLUSTER_PAGES {
                return Err(Refusal::invalid(format!(
                    "cluster {id} has {} pages; --add {add} would pass the limit of {MAX_CLUSTER_PAGES}",
                    desc.npages
                )));
            }
            // The stored image changes size: a cached image of it goes first.
            m.forget(id);
            out = render::cluster_info(&s.clu_resize(id, add)?, None);
        }
        CluCommand::History { id, clear } => {
            let desc = s.clu_get_desc(id)?;
            let v = s.volume(id.vol())?;
            if clear {
                if !owner_ok(&desc) {
                    return Err(denied("clearing another user's cluster history"));
                }
                v.clu_set_history(id.clu(), &[])?;
                let _ = writeln!(out, "forgot the access history of cluster {id}");
            } else {
                let h = v.clu_history(id.clu());
                let head: Vec<String> = h.iter().take(16).map(|p| p.to_string()).collect();
                let more = if h.len() > 16 { " ..." } else { "" };
                let _ = writeln!(out, "{} pages: {}{more}", h.len(), head.join(" "));
            }
        }
        CluCommand::Destroy { id } => {
            let desc = s.clu_get_desc(id)?;
            if !owner_ok(&desc) {
                return Err(denied("destroying another user's cluster"));
            }
            m.forget(id);
            s.clu_destroy(id)?;
            let _ = writeln!(out, "destroyed cluster {id}");
        }
    }
    Ok(out)
}
