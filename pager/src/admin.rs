//! The administration commands (`pager status`, `pager vol ...`, `pager clu ...`). The CLI
//! parses them and sends their words to the running pager, which parses the same words with
//! the same definitions and executes them: one grammar, checked on both sides.

use std::fmt::Write as _;

use clap::{Args, Parser, Subcommand};
use client::{ClusterId, ClusterKind, ErrorCode};

mod format;
mod restore;

use self::format::{describe, json};
use crate::daemon::{Manager, Refusal};
use crate::storage::{ClusterDesc, VolumeParams};

/// An administration command.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// Shows the pager's state: resident pages, paging partition, faults, each reliable
    /// volume's backups (state, lag), mapped clusters.
    Status {
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Shows every cluster's usage statistics (thesis J1-J6): uses, mean time mapped, sharing
    /// rate, mean pages modified and paged out per use, faults by kind.
    Stats {
        /// As JSON (one object per cluster, in an array).
        #[arg(long)]
        json: bool,
    },
    /// Volumes: create, list, mount, unmount, resize, delete.
    #[command(subcommand)]
    Vol(VolCommand),
    /// Clusters: create, list, info, resize, destroy.
    #[command(subcommand)]
    Clu(CluCommand),
}

/// Volume administration.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum VolCommand {
    /// Creates a volume and mounts it, now and at every start: the fast local service, or with
    /// `--backup` a reliable volume whose commits are propagated to backup servers.
    Create {
        /// Its name: letters, digits, `-`, `_`, `.`, starting with a letter.
        name: String,
        #[command(flatten)]
        capacity: Capacity,
        /// Create it without mounting it.
        #[arg(long)]
        no_mount: bool,
        /// A backup server (`pager backup-server`) as HOST:PORT; repeat for 2 or 3 backups.
        #[arg(long = "backup", value_name = "HOST:PORT")]
        backups: Vec<String>,
        /// Commits wait for K backup acknowledgements (default 0: asynchronous).
        #[arg(long, value_name = "K", default_value_t = 0)]
        sync: u32,
    },
    /// Rebuilds a reliable volume from its freshest backup and mounts it here, as its new
    /// primary: raises its epoch on every backup reached first (the old primary is fenced), and
    /// reports the LSN restored to.
    Restore {
        /// The volume's name (as on the primary that failed).
        name: String,
        /// One of its backup servers, as HOST:PORT; the others are found through it.
        #[arg(long, value_name = "HOST:PORT")]
        from: String,
    },
    /// Lists the volumes of the catalog.
    List,
    /// Mounts a volume, now and at every start (recovers its journal).
    Mount {
        /// The volume's name or id.
        vol: String,
    },
    /// Unmounts a volume and removes it from the mount table.
    Unmount {
        /// The volume's name or id.
        vol: String,
    },
    /// Changes a volume's capacity.
    Resize {
        /// The volume's name or id.
        vol: String,
        #[command(flatten)]
        capacity: Capacity,
    },
    /// Deletes an unmounted volume.
    Delete {
        /// The volume's name or id.
        vol: String,
        /// Delete it even if it still holds clusters.
        #[arg(long)]
        force: bool,
    },
}

/// A volume's capacity.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Capacity in 4 KiB pages; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub capacity_pages: u64,
}

/// Cluster administration.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CluCommand {
    /// Creates a cluster of zero pages, owned by the calling user (not mapped).
    Create {
        /// The volume's name or id.
        vol: String,
        /// Size in 4 KiB pages.
        #[arg(long)]
        pages: u64,
        /// protected (default), shareable or temporary.
        #[arg(long, default_value = "protected")]
        kind: ClusterKind,
    },
    /// Lists a volume's clusters.
    List {
        /// The volume's name or id.
        vol: String,
    },
    /// Shows a cluster's descriptor and statistics.
    Info {
        /// The cluster id: VOL:CLU in hex (0001:002a) or one number.
        id: ClusterId,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adds zero pages at the end of a cluster that no process maps.
    Resize {
        /// The cluster id.
        id: ClusterId,
        /// Pages to add.
        #[arg(long)]
        add: u64,
    },
    /// Destroys a cluster that no process maps, and its storage.
    Destroy {
        /// The cluster id.
        id: ClusterId,
    },
    /// Shows a cluster's access history (the order its pages came in during its last use,
    /// replayed as prefetch at the next map), or forgets it.
    History {
        /// The cluster id.
        id: ClusterId,
        /// Forget the history: the next map prefetches nothing.
        #[arg(long)]
        clear: bool,
    },
}

impl AdminCommand {
    /// The words that parse back to this command (what travels to the pager).
    pub fn words(&self) -> Vec<String> {
        let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            AdminCommand::Status { json } => {
                let mut out = w(&["status"]);
                if *json {
                    out.push("--json".into());
                }
                out
            }
            AdminCommand::Stats { json } => {
                let mut out = w(&["stats"]);
                if *json {
                    out.push("--json".into());
                }
                out
            }
            AdminCommand::Vol(v) => {
                let mut out = w(&["vol"]);
                match v {
                    VolCommand::Create {
                        name,
                        capacity,
                        no_mount,
                        backups,
                        sync,
                    } => {
                        out.extend(w(&["create", "--capacity-pages"]));
                        out.push(capacity.capacity_pages.to_string());
                        if *no_mount {
                            out.push("--no-mount".into());
                        }
                        for b in backups {
                            out.push("--backup".into());
                            out.push(b.clone());
                        }
                        out.push("--sync".into());
                        out.push(sync.to_string());
                        out.extend(w(&["--", name]));
                    }
                    VolCommand::Restore { name, from } => {
                        out.extend(w(&["restore", "--from", from, "--", name]))
                    }
                    VolCommand::List => out.push("list".into()),
                    VolCommand::Mount { vol } => out.extend(w(&["mount", "--", vol])),
                    VolCommand::Unmount { vol } => out.extend(w(&["unmount", "--", vol])),
                    VolCommand::Resize { vol, capacity } => {
                        out.extend(w(&["resize", "--capacity-pages"]));
                        out.push(capacity.capacity_pages.to_string());
                        out.extend(w(&["--", vol]));
                    }
                    VolCommand::Delete { vol, force } => {
                        out.push("delete".into());
                        if *force {
                            out.push("--force".into());
                        }
                        out.extend(w(&["--", vol]));
                    }
                }
                out
            }
            AdminCommand::Clu(c) => {
                let mut out = w(&["clu"]);
                match c {
                    CluCommand::Create { vol, pages, kind } => {
                        out.extend(w(&["create", "--pages"]));
                        out.push(pages.to_string());
                        out.extend(w(&["--kind", kind.name(), "--", vol]));
                    }
                    CluCommand::List { vol } => out.extend(w(&["list", "--", vol])),
                    CluCommand::Info { id, json } => {
                        out.extend(w(&["info", &id.to_string()]));
                        if *json {
                            out.push("--json".into());
                        }
                    }
                    CluCommand::Resize { id, add } => {
                        out.extend(w(&["resize", &id.to_string(), "--add"]));
                        out.push(add.to_string());
                    }
                    CluCommand::Destroy { id } => out.extend(w(&["destroy", &id.to_string()])),
                    CluCommand::History { id, clear } => {
                        out.extend(w(&["history", &id.to_string()]));
                        if *clear {
                            out.push("--clear".into());
                        }
                    }
                }
                out
            }
        }
    }
}

#[derive(Parser)]
#[command(name = "pager", no_binary_name = true)]
struct Line {
    #[command(subcommand)]
    command: AdminCommand,
}

/// Parses the words of a command sent over the socket.
pub fn parse(words: &[String]) -> Result<AdminCommand, String> {
    Line::try_parse_from(words)
        .map(|l| l.command)
        .map_err(|e| e.render().to_string())
}

fn denied(what: &str) -> Refusal {
    Refusal::new(
        ErrorCode::AccessDenied,
        format!("{what} is reserved to root and to the pager's own user"),
    )
}

/// Runs an administration command for a client of uid `uid`.
pub(crate) fn execute(m: &Manager, uid: u32, words: Vec<String>) -> Result<String, Refusal> {
    let cmd = parse(&words).map_err(Refusal::invalid)?;
    let s = &m.storage;
    let admin = uid == 0 || uid == nix::unistd::geteuid().as_raw();
    let owner_ok = |d: &ClusterDesc| admin || d.owner == uid;
    let mut out = String::new();
    match cmd {
        AdminCommand::Status { json } => out = m.status(json),
        AdminCommand::Vol(VolCommand::List) => {
            let _ = writeln!(
                out,
                "{:<6} {:<20} {:<8} {:<8} {:>8} {:>12} {:>12}",
                "ID", "NAME", "SERVICE", "STATE", "CLUSTERS", "USED_PAGES", "CAPACITY"
            );
            for v in s.volumes() {
                let (state, clusters, used, cap) = match &v.mounted {
                    Some(i) => (
                        "mounted",
                        i.clusters.to_string(),
                        i.used_pages.to_string(),
                        i.capacity_pages.to_string(),
                    ),
                    None => ("-", "-".into(), "-".into(), "-".into()),
                };
                let _ = writeln!(
                    out,
                    "{:<6} {:<20} {:<8} {:<8} {:>8} {:>12} {:>12}",
                    v.entry.vol.to_string(),
                    v.entry.name,
                    v.entry.service,
                    state,
                    clusters,
                    used,
                    cap
                );
            }
        }
        AdminCommand::Vol(_) if !admin => return Err(denied("volume administration")),
        AdminCommand::Vol(VolCommand::Create {
            name,
            capacity,
            no_mount,
            backups,
            sync,
        }) => {
            let params = VolumeParams {
                capacity_pages: capacity.capacity_pages,
                backups,
                sync,
                ..VolumeParams::default()
            };
            let entry = s.vol_create(&name, &params)?;
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
        AdminCommand::Vol(VolCommand::Restore { name, from }) => {
            restore::run(m, &name, &from, &mut out)?
        }
        AdminCommand::Vol(VolCommand::Mount { vol }) => {
            let entry = s.find(&vol)?;
            s.vol_mount(entry.vol)?;
            let _ = writeln!(out, "mounted volume {} ({})", entry.name, entry.vol);
        }
        AdminCommand::Vol(VolCommand::Unmount { vol }) => {
            let entry = s.find(&vol)?;
            if m.volume_in_use(entry.vol) {
                return Err(Refusal::new(
                    ErrorCode::Busy,
                    format!(
                        "volume {} has mapped clusters; unmap them first",
                        entry.name
                    ),
                ));
            }
            s.vol_unmount(entry.vol)?;
            let _ = writeln!(out, "unmounted volume {} ({})", entry.name, entry.vol);
        }
        AdminCommand::Vol(VolCommand::Resize { vol, capacity }) => {
            let entry = s.find(&vol)?;
            s.vol_resize(entry.vol, capacity.capacity_pages)?;
            let _ = writeln!(
                out,
                "volume {} capacity is now {} pages",
                entry.name, capacity.capacity_pages
            );
        }
        AdminCommand::Vol(VolCommand::Delete { vol, force }) => {
            let entry = s.find(&vol)?;
            s.vol_delete(entry.vol, force)?;
            let _ = writeln!(out, "deleted volume {} ({})", entry.name, entry.vol);
        }
        AdminCommand::Clu(CluCommand::Create { vol, pages, kind }) => {
            let entry = s.find(&vol)?;
            if pages == 0 || pages > crate::daemon::MAX_CLUSTER_PAGES {
                return Err(Refusal::invalid(format!(
                    "a cluster has 1 to {} pages",
                    crate::daemon::MAX_CLUSTER_PAGES
                )));
            }
            let d = s.clu_create(entry.vol, pages, uid, kind)?;
            let _ = writeln!(out, "{}", d.id);
        }
        AdminCommand::Clu(CluCommand::List { vol }) => {
            let entry = s.find(&vol)?;
            let _ = writeln!(
                out,
                "{:<10} {:>10} {:>8} {:<10}",
                "ID", "PAGES", "OWNER", "KIND"
            );
            for d in s.volume(entry.vol)?.clu_list() {
                let _ = writeln!(
                    out,
                    "{:<10} {:>10} {:>8} {:<10}",
                    d.id.to_string(),
                    d.npages,
                    d.owner,
                    d.kind.name()
                );
            }
        }
        AdminCommand::Clu(CluCommand::Info { id, json: false }) => {
            out = describe(&s.clu_get_desc(id)?);
            out += &format!("mapped now by      {} processes\n", m.mappers(id));
        }
        AdminCommand::Clu(CluCommand::Info { id, json: true }) => {
            out = json(&s.clu_get_desc(id)?) + "\n"
        }
        AdminCommand::Stats { json: as_json } => {
            let mut all: Vec<ClusterDesc> = s
                .volumes()
                .iter()
                .filter_map(|v| s.volume(v.entry.vol).ok())
                .flat_map(|v| v.clu_list())
                .collect();
            all.sort_by_key(|d| d.id);
            if as_json {
                let items: Vec<String> = all.iter().map(json).collect();
                out = format!("[{}]\n", items.join(",\n"));
            } else {
                let _ = writeln!(
                    out,
                    "{:<10} {:<10} {:>6} {:>12} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
                    "ID",
                    "KIND",
                    "USES",
                    "MAPPED_MS",
                    "SHARING",
                    "MODIFIED",
                    "PAGED_OUT",
                    "F_ZERO",
                    "F_STORE",
                    "F_PAGING",
                    "F_WP"
                );
                for d in &all {
                    let m = d.stats.means();
                    let f = d.stats.faults;
                    let _ = writeln!(
                        out,
                        "{:<10} {:<10} {:>6} {:>12.1} {:>8.2} {:>10.1} {:>10.1} {:>9} {:>9} {:>9} {:>9}",
                        d.id.to_string(),
                        d.kind.name(),
                        d.stats.uses,
                        m.mapped_ms,
                        m.sharing,
                        m.modified,
                        m.paged_out,
                        f[0],
                        f[1],
                        f[2],
                        f[3]
                    );
                }
                let _ = writeln!(out, "(means per use; faults are totals)");
            }
        }
        AdminCommand::Clu(CluCommand::Resize { id, .. } | CluCommand::Destroy { id })
            if m.is_mapped(id) =>
        {
            return Err(Refusal::new(
                ErrorCode::Busy,
                format!("cluster {id} is mapped; a mapping process resizes it with clu_Resize, and it can be destroyed once unmapped"),
            ));
        }
        AdminCommand::Clu(CluCommand::Resize { id, add }) => {
            let d = s.clu_get_desc(id)?;
            if !owner_ok(&d) {
                return Err(denied("resizing another user's cluster"));
            }
            out = describe(&s.clu_resize(id, add)?);
        }
        AdminCommand::Clu(CluCommand::History { id, clear }) => {
            let d = s.clu_get_desc(id)?;
            let v = s.volume(id.vol())?;
            if clear {
                if !owner_ok(&d) {
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
        AdminCommand::Clu(CluCommand::Destroy { id }) => {
            let d = s.clu_get_desc(id)?;
            if !owner_ok(&d) {
                return Err(denied("destroying another user's cluster"));
            }
            m.forget(id);
            s.clu_destroy(id)?;
            let _ = writeln!(out, "destroyed cluster {id}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_travels_as_words_that_parse_back_to_it() {
        let id = ClusterId(0x0001_0002);
        let cap = |n| Capacity { capacity_pages: n };
        let commands = vec![
            AdminCommand::Status { json: false },
            AdminCommand::Status { json: true },
            AdminCommand::Vol(VolCommand::Restore {
                name: "rel".into(),
                from: "127.0.0.1:7701".into(),
            }),
            AdminCommand::Vol(VolCommand::Create {
                name: "-dash".into(),
                capacity: cap(7),
                no_mount: true,
                backups: vec![],
                sync: 0,
            }),
            AdminCommand::Vol(VolCommand::Create {
                name: "rel".into(),
                capacity: cap(0),
                no_mount: false,
                backups: vec!["127.0.0.1:7701".into(), "[::1]:7702".into()],
                sync: 1,
            }),
            AdminCommand::Vol(VolCommand::List),
            AdminCommand::Vol(VolCommand::Mount { vol: "data".into() }),
            AdminCommand::Vol(VolCommand::Unmount { vol: "0001".into() }),
            AdminCommand::Vol(VolCommand::Resize {
                vol: "data".into(),
                capacity: cap(0),
            }),
            AdminCommand::Vol(VolCommand::Delete {
                vol: "data".into(),
                force: true,
            }),
            AdminCommand::Clu(CluCommand::Create {
                vol: "data".into(),
                pages: 20,
                kind: ClusterKind::Temporary,
            }),
            AdminCommand::Clu(CluCommand::List { vol: "data".into() }),
            AdminCommand::Clu(CluCommand::Info { id, json: false }),
            AdminCommand::Clu(CluCommand::Info { id, json: true }),
            AdminCommand::Stats { json: true },
            AdminCommand::Stats { json: false },
            AdminCommand::Clu(CluCommand::Resize { id, add: 3 }),
            AdminCommand::Clu(CluCommand::Destroy { id }),
            AdminCommand::Clu(CluCommand::History { id, clear: true }),
            AdminCommand::Clu(CluCommand::History { id, clear: false }),
        ];
        for c in commands {
            assert_eq!(parse(&c.words()), Ok(c.clone()), "{:?}", c.words());
        }
        assert!(parse(&["vol".into(), "explode".into()]).is_err());
        assert!(parse(&[]).is_err());
    }
}
