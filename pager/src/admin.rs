//! The grammar of the administration commands (`pager status`, `pager vol ...`, `pager clu
//! ...`). The CLI parses them and sends their words to the running pager, which parses the same
//! words with the same definitions (and executes them: `daemon::admin`): one grammar, checked
//! on both sides.

use clap::{Args, Parser, Subcommand};
use clu_proto::{ClusterId, ClusterKind};

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
    /// The site cache: the clean images kept resident after their last unmap.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// The sites of this pager's cell (`pager serve --catalog`).
    #[command(subcommand)]
    Site(SiteCommand),
}

/// The cell's sites.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum SiteCommand {
    /// Lists every site the cell has known: its address, whether its lease is alive, the
    /// volumes it mounts.
    List {
        /// As JSON (one object per site, in an array).
        #[arg(long)]
        json: bool,
    },
}

/// The site cache.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CacheCommand {
    /// Drops cached images (their memory is freed; the next map reads storage), of one
    /// cluster or, without one, all of them. Mapped clusters are not touched. Root and the
    /// pager's user only.
    Drop {
        /// The cluster id; all cached images if omitted.
        id: Option<ClusterId>,
    },
}

/// What happens to a reliable volume when its primary fails (thesis N1-N3).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverPolicy {
    /// Wait for the primary's repair.
    Wait,
    /// Restore it at once on a standby site, by itself.
    Restore,
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
        /// When the primary's site dies or is cut off from the catalog: `wait` for its repair
        /// (or `pager vol restore` by hand), or `restore` the volume at once on a `--standby`
        /// site (a reliable volume in a cell).
        #[arg(long, value_enum, default_value_t = FailoverPolicy::Wait)]
        failover: FailoverPolicy,
        /// A site allowed to take the volume over (`--failover restore`); repeat for several.
        #[arg(long = "standby", value_name = "SITE")]
        standbys: Vec<String>,
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
        /// Restore even if too few backups were reached to meet every acknowledged commit of
        /// a `--sync K` volume (backups lost for good): some acknowledged commits may then be
        /// missing, and an old primary may still reach the backups that were not fenced.
        #[arg(long)]
        force: bool,
    },
    /// Lists the volumes of the catalog; in a cell, every volume of the cell with the site
    /// that mounts it and its fencing epoch.
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
                        failover,
                        standbys,
                    } => {
                        out.extend(w(&["create", "--capacity-pages"]));
                        out.push(capacity.capacity_pages.to_string());
                        out.push("--failover".into());
                        out.push(match failover {
                            FailoverPolicy::Wait => "wait".into(),
                            FailoverPolicy::Restore => "restore".into(),
                        });
                        for s in standbys {
                            out.push("--standby".into());
                            out.push(s.clone());
                        }
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
                    VolCommand::Restore { name, from, force } => {
                        out.extend(w(&["restore", "--from", from]));
                        if *force {
                            out.push("--force".into());
                        }
                        out.extend(w(&["--", name]));
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
            AdminCommand::Site(SiteCommand::List { json }) => {
                let mut out = w(&["site", "list"]);
                if *json {
                    out.push("--json".into());
                }
                out
            }
            AdminCommand::Cache(CacheCommand::Drop { id }) => {
                let mut out = w(&["cache", "drop"]);
                out.extend(id.map(|id| id.to_string()));
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

/// Parses the words of a command sent over the socket; the error says what is wrong in
/// clap's words (`e.render()`).
pub fn parse(words: &[String]) -> Result<AdminCommand, clap::Error> {
    Line::try_parse_from(words).map(|l| l.command)
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
                force: false,
            }),
            AdminCommand::Vol(VolCommand::Restore {
                name: "rel".into(),
                from: "127.0.0.1:7701".into(),
                force: true,
            }),
            AdminCommand::Vol(VolCommand::Create {
                name: "-dash".into(),
                capacity: cap(7),
                no_mount: true,
                backups: vec![],
                sync: 0,
                failover: FailoverPolicy::Wait,
                standbys: vec![],
            }),
            AdminCommand::Vol(VolCommand::Create {
                name: "rel".into(),
                capacity: cap(0),
                no_mount: false,
                backups: vec!["127.0.0.1:7701".into(), "[::1]:7702".into()],
                sync: 1,
                failover: FailoverPolicy::Restore,
                standbys: vec!["site-b".into(), "site-c".into()],
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
            AdminCommand::Cache(CacheCommand::Drop { id: Some(id) }),
            AdminCommand::Cache(CacheCommand::Drop { id: None }),
            AdminCommand::Site(SiteCommand::List { json: true }),
            AdminCommand::Site(SiteCommand::List { json: false }),
        ];
        for c in commands {
            assert_eq!(parse(&c.words()).ok(), Some(c.clone()), "{:?}", c.words());
        }
        assert!(parse(&["vol".into(), "explode".into()]).is_err());
        assert!(parse(&[]).is_err());
    }
}
