//! `pager`: administration of the storage service (volumes, clusters) and machine checks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use client::{ClusterId, ClusterKind};
use pager::storage::{ClusterDesc, Storage, StorageConfig, VolumeParams};

/// The memory manager of the cluster machine: a user-space pager for persistent clusters.
#[derive(Parser)]
#[command(name = "pager", version, about, propagate_version = true)]
struct Cli {
    /// The storage root: catalog, mount table and volumes.
    #[arg(
        long,
        global = true,
        env = "CLU_STORAGE_ROOT",
        default_value = "/var/lib/clu-pager"
    )]
    root: PathBuf,
    /// Log more (repeat for more still); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks that this machine's userfaultfd offers what the pager needs.
    Check,
    /// Volumes: create, list, mount, unmount, resize, delete.
    #[command(subcommand)]
    Vol(VolCommand),
    /// Clusters: create, list, info, resize, destroy.
    #[command(subcommand)]
    Clu(CluCommand),
}

#[derive(Subcommand)]
enum VolCommand {
    /// Creates a volume (fast local service) and mounts it, now and at every start.
    Create {
        /// Its name: letters, digits, `-`, `_`, `.`, starting with a letter.
        name: String,
        #[command(flatten)]
        capacity: Capacity,
        /// Create it without mounting it.
        #[arg(long)]
        no_mount: bool,
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

#[derive(Args)]
struct Capacity {
    /// Capacity in 4 KiB pages; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    capacity_pages: u64,
}

#[derive(Subcommand)]
enum CluCommand {
    /// Creates a cluster of zero pages, owned by the calling user.
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
    /// Shows a cluster's descriptor.
    Info {
        /// The cluster id: VOL:CLU in hex (0001:002a) or one number.
        id: ClusterId,
    },
    /// Adds zero pages at the end of a cluster.
    Resize {
        /// The cluster id.
        id: ClusterId,
        /// Pages to add.
        #[arg(long)]
        add: u64,
    },
    /// Destroys a cluster and its storage.
    Destroy {
        /// The cluster id.
        id: ClusterId,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print_desc(d: &ClusterDesc) {
    println!("id          {}", d.id);
    println!("pages       {}", d.npages);
    println!("owner       {}", d.owner);
    println!("kind        {}", d.kind.name());
    println!("created     {}", d.created);
    println!("uses        {}", d.stats.uses);
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let open = || Storage::open(&cli.root, StorageConfig::default());
    match cli.command {
        Command::Check => {
            let probe = pager::uffd_probe::probe();
            println!("{probe}");
            probe
                .result
                .map_err(|e| format!("userfaultfd is not usable here: {e}"))?;
        }
        Command::Vol(cmd) => {
            let storage = open()?;
            match cmd {
                VolCommand::Create {
                    name,
                    capacity,
                    no_mount,
                } => {
                    let params = VolumeParams {
                        capacity_pages: capacity.capacity_pages,
                    };
                    let entry = storage.vol_create(&name, &params)?;
                    if !no_mount {
                        storage.vol_mount(entry.vol)?;
                    }
                    println!(
                        "created volume {} ({}){}",
                        entry.name,
                        entry.vol,
                        if no_mount { "" } else { ", mounted" }
                    );
                }
                VolCommand::List => {
                    println!(
                        "{:<6} {:<20} {:<8} {:<8} {:>8} {:>12} {:>12}",
                        "ID", "NAME", "SERVICE", "STATE", "CLUSTERS", "USED_PAGES", "CAPACITY"
                    );
                    for v in storage.volumes() {
                        let (state, clusters, used, cap) = match &v.mounted {
                            Some(i) => (
                                "mounted",
                                i.clusters.to_string(),
                                i.used_pages.to_string(),
                                i.capacity_pages.to_string(),
                            ),
                            None => ("-", "-".into(), "-".into(), "-".into()),
                        };
                        println!(
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
                VolCommand::Mount { vol } => {
                    let entry = storage.find(&vol)?;
                    storage.vol_mount(entry.vol)?;
                    println!("mounted volume {} ({})", entry.name, entry.vol);
                }
                VolCommand::Unmount { vol } => {
                    let entry = storage.find(&vol)?;
                    storage.vol_unmount(entry.vol)?;
                    println!("unmounted volume {} ({})", entry.name, entry.vol);
                }
                VolCommand::Resize { vol, capacity } => {
                    let entry = storage.find(&vol)?;
                    storage.vol_resize(entry.vol, capacity.capacity_pages)?;
                    println!(
                        "volume {} capacity is now {} pages",
                        entry.name, capacity.capacity_pages
                    );
                }
                VolCommand::Delete { vol, force } => {
                    let entry = storage.find(&vol)?;
                    storage.vol_delete(entry.vol, force)?;
                    println!("deleted volume {} ({})", entry.name, entry.vol);
                }
            }
            storage.close()?;
        }
        Command::Clu(cmd) => {
            let storage = open()?;
            match cmd {
                CluCommand::Create { vol, pages, kind } => {
                    let entry = storage.find(&vol)?;
                    let uid = nix::unistd::getuid().as_raw();
                    let d = storage.clu_create(entry.vol, pages, uid, kind)?;
                    println!("{}", d.id);
                }
                CluCommand::List { vol } => {
                    let entry = storage.find(&vol)?;
                    println!("{:<10} {:>10} {:>8} {:<10}", "ID", "PAGES", "OWNER", "KIND");
                    for d in storage.volume(entry.vol)?.clu_list() {
                        println!(
                            "{:<10} {:>10} {:>8} {:<10}",
                            d.id.to_string(),
                            d.npages,
                            d.owner,
                            d.kind.name()
                        );
                    }
                }
                CluCommand::Info { id } => print_desc(&storage.clu_get_desc(id)?),
                CluCommand::Resize { id, add } => print_desc(&storage.clu_resize(id, add)?),
                CluCommand::Destroy { id } => {
                    storage.clu_destroy(id)?;
                    println!("destroyed cluster {id}");
                }
            }
            storage.close()?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pager: error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
