//! `pager`: the memory manager daemon (`pager serve`), the backup server (`pager
//! backup-server`) and the administration commands, which talk to the running daemon over its
//! socket. This file holds the command line (its definitions, then what each command does);
//! `config` turns it into the daemons' settings.

mod admin;
mod config;
mod daemon;
mod manual;
mod render;
mod tls_args;
mod top;
mod uffd_probe;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use clu_goofy::GoofyConfig;
use clu_proto::channel::Channel;
use clu_proto::protocol::{Request, Response};

use crate::admin::AdminCommand;
use crate::config::ServeConfig;

/// The memory manager of the cluster machine: a user-space pager for persistent clusters.
#[derive(Parser)]
#[command(name = "pager", version, about, propagate_version = true)]
struct Cli {
    /// The pager's socket.
    #[arg(
        long,
        global = true,
        env = "CLU_PAGER_SOCKET",
        default_value = "/run/clu-pager.sock"
    )]
    socket: PathBuf,
    /// Log more (repeat for more still); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the pager: serves clusters to the processes of this machine until SIGTERM.
    Serve {
        /// The storage root: catalog, mount table, volumes, paging partition. A new root gets
        /// volume 1 (`default`), created and mounted.
        #[arg(long, env = "CLU_STORAGE_ROOT", default_value = "clu-data")]
        root: PathBuf,
        /// The resident budget: pages of cluster memory held at once, over all clusters.
        /// Beyond it, clean pages are dropped and dirty ones go to the paging partition.
        #[arg(long, default_value_t = 65536)]
        resident_pages: u64,
        /// Free a cluster's memory at its last unmap instead of keeping its clean image as the
        /// site's cache (within the resident budget) for the next map.
        #[arg(long, env = "CLU_NO_IMAGE_CACHE")]
        no_image_cache: bool,
        /// The paging partition's capacity, in pages.
        #[arg(long, default_value_t = 1 << 22)]
        paging_pages: u32,
        /// Microseconds a fault thread keeps polling for the next fault before it sleeps
        /// (yielding the CPU meanwhile); 0, the default, sleeps at once. An experiment: on the
        /// project's 2-vCPU VM it did not beat sleeping (see BENCHMARKS.md).
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// The socket's permission bits, in octal: who may connect at all. 666 lets every
        /// local user in (each request is checked against the caller's uid); 660 with
        /// --socket-group limits clients to a group.
        #[arg(long, default_value = "666", value_parser = octal)]
        socket_mode: u32,
        /// The socket's group (a name or a gid).
        #[arg(long, value_parser = group)]
        socket_group: Option<nix::unistd::Gid>,
        /// How far (MiB of journal) a backup of a reliable volume may fall behind before it is
        /// marked stale and gets a full copy when it returns.
        #[arg(
            long,
            env = "CLU_GOOFY_RETAIN_MB",
            default_value_t = 256,
            value_name = "MIB"
        )]
        goofy_retain_mb: u64,
        /// Join a cell of sites whose catalog is on etcd, as site --site (the name in its
        /// certificate): volume ids are allocated across the cell, and mounting a volume takes
        /// its lock there (one site at a time). Without it the pager is a site on its own.
        #[arg(long, value_name = "etcd://HOST:PORT[,HOST:PORT...]", requires_all = ["site", "listen"])]
        catalog: Option<String>,
        /// Where this site serves its volumes to the cell's other sites (remote paging),
        /// HOST:PORT, as recorded in the catalog.
        #[arg(long, value_name = "HOST:PORT", requires = "catalog", value_parser = check_address)]
        listen: Option<String>,
        /// The address the other sites are told to reach this one at, if not --listen (a
        /// relay, a NAT or a proxy in between); its certificate must name that host too.
        #[arg(long, value_name = "HOST:PORT", requires = "listen", value_parser = check_address)]
        advertise: Option<String>,
        /// The cell's name: its key prefix in etcd (several cells may share one etcd).
        #[arg(long, default_value = "default", requires = "catalog")]
        cell: String,
        /// Seconds after its last renewal that a site which died or lost etcd loses its
        /// mounts (its lease's TTL).
        #[arg(
            long,
            default_value_t = 10,
            value_name = "SECONDS",
            requires = "catalog"
        )]
        lease_ttl: u64,
        /// Seconds a request to another site of the cell (or to the memory server) may wait
        /// for its answer: a fault on a page only a dead or cut-off site holds fails (SIGBUS in
        /// the process) after this long.
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        remote_timeout: u64,
        /// Send evicted dirty pages to the memory server at HOST:PORT (`pager memory-server`)
        /// instead of the local paging file (thesis K2). No durability promise, as for the
        /// local partition; if the server dies, faults on the pages it held raise SIGBUS in
        /// their processes (abort still works). Needs the cell's keys (--keys, --site).
        #[arg(long, value_name = "HOST:PORT", value_parser = check_address, requires = "site")]
        paging_server: Option<String>,
        /// Serve the pager's metrics at http://HOST:PORT/metrics in the Prometheus text format
        /// (faults and their latencies by kind, commits, evictions, resident and cached pages,
        /// backups' lag, other sites' round trips).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_listen: Option<String>,
        #[command(flatten)]
        tls: tls_args::TlsArgs,
    },
    /// Runs a backup server: keeps images of the reliable volumes of other pagers, kept up to
    /// date by their propagation (thesis VII.3), until killed.
    BackupServer {
        /// Where the images live (one directory per volume, each with its own journal).
        #[arg(long)]
        root: PathBuf,
        /// The address to listen on, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT", value_parser = check_address)]
        listen: String,
        /// Serve its metrics at http://HOST:PORT/metrics in the Prometheus text format
        /// (images, sessions, operations applied, refusals).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_listen: Option<String>,
        #[command(flatten)]
        tls: tls_args::TlsArgs,
    },
    /// Runs a memory server: this machine's RAM as the paging partition of other sites
    /// (`pager serve --paging-server`, thesis K2), until killed. Execution memory only: the
    /// pages it holds die with it.
    MemoryServer {
        /// The address to listen on, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT", value_parser = check_address)]
        listen: String,
        /// How many pages it keeps at most, over all sites (allocated as they come).
        #[arg(long, value_name = "N")]
        pages: u32,
        #[command(flatten)]
        tls: tls_args::TlsArgs,
    },
    /// The cell's keys: a CA, and a certificate per site signed by it (no openssl needed).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Checks that this machine's userfaultfd offers what the pager needs.
    Check,
    /// A live view of the running pager, refreshed every --interval: per cluster faults/s by
    /// kind, resident, dirty and cached pages, mappers; per volume commits/s and backup lag;
    /// the fault latency histogram as a sparkline. q quits.
    Top {
        /// Seconds between readings.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS", value_parser = interval)]
        interval: f64,
    },
    /// Writes the man pages (pager.1, pager-serve.1, ...), generated from this help, into DIR.
    Man {
        /// Where to write them (created if missing), e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
    /// Prints a completion script for SHELL to standard output, e.g.
    /// `pager completions bash > /etc/bash_completion.d/pager`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Admin(AdminCommand),
}

/// `pager keys`.
#[derive(Subcommand)]
enum KeysCommand {
    /// Writes a new CA for a cell into DIR: ca.crt, and ca.key (mode 600).
    Init {
        /// Where the keys live.
        dir: PathBuf,
        /// How long the CA is valid, in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Writes DIR/NAME.crt and DIR/NAME.key (mode 600), signed by the CA in DIR, for site NAME.
    Issue {
        /// Where the keys live (with the CA).
        dir: PathBuf,
        /// The site's name: what it claims to its peers (letters, digits, `-`).
        name: String,
        /// A host name or address the site is reached at (repeat): peers check it.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

/// A command-line value that does not parse.
#[derive(Debug, thiserror::Error)]
enum ArgError {
    #[error("`{0}` is not permission bits in octal, like 660")]
    Mode(String),
    #[error("no group `{0}` on this machine; give a group name or a gid")]
    Group(String),
    #[error("`{0}` is not HOST:PORT, like 10.0.0.1:7300")]
    Address(String),
    #[error("`{0}` is not a number of seconds between 0.05 and 3600, like 1 or 0.5")]
    Interval(String),
}

/// A `HOST:PORT` that names a port.
fn check_address(s: &str) -> Result<String, ArgError> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_owned()),
        _ => Err(ArgError::Address(s.to_owned())),
    }
}

fn interval(s: &str) -> Result<f64, ArgError> {
    s.parse::<f64>()
        .ok()
        .filter(|x| (0.05..=3600.0).contains(x))
        .ok_or_else(|| ArgError::Interval(s.to_string()))
}

fn octal(s: &str) -> Result<u32, ArgError> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| ArgError::Mode(s.to_string()))
}

fn group(s: &str) -> Result<nix::unistd::Gid, ArgError> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(ArgError::Group(s.to_string())),
    }
}

fn init_logging(verbose: u8, serving: bool) {
    let default = match (verbose, serving) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs written to files and journals stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Started by systemd with its output going to the journal (which stamps every line):
    // no timestamps of our own.
    if manual::under_journald() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// What can go wrong between the CLI and the running pager.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("no pager answers on {path} ({why}); start one with `pager serve`, or point at the running one with --socket PATH or CLU_PAGER_SOCKET")]
    NoPager { path: PathBuf, why: std::io::Error },
    #[error("{path}: permission denied; the pager's --socket-mode and --socket-group keep this user out: join its group (e.g. `usermod -aG clu $USER`, then log in again), or run as root")]
    Denied { path: PathBuf },
    #[error("the pager on {path} did not answer ({why}); see its log (`journalctl -u clu-pager` under systemd)")]
    Lost { path: PathBuf, why: String },
    #[error("the pager on {path} gave an answer this `pager` does not expect: it is another version; use the `pager` binary of the running daemon, or restart `pager serve` with this one")]
    Unexpected { path: PathBuf },
    /// The pager refused the command: its message says why and what to do.
    #[error("{0}")]
    Refused(String),
}

fn admin(socket: &Path, cmd: &AdminCommand) -> Result<String, AdminError> {
    let path = socket.to_path_buf();
    let stream = UnixStream::connect(socket).map_err(|why| match why.kind() {
        std::io::ErrorKind::PermissionDenied => AdminError::Denied { path: path.clone() },
        _ => AdminError::NoPager {
            path: path.clone(),
            why,
        },
    })?;
    let lost = |why: String| AdminError::Lost {
        path: path.clone(),
        why,
    };
    let chan = Channel::new(stream);
    chan.send(&Request::Admin { words: cmd.words() }.encode(), &[])
        .map_err(|e| lost(e.to_string()))?;
    let (payload, _) = chan.recv().map_err(|e| lost(e.to_string()))?;
    match Response::decode(&payload) {
        Ok(Response::Text(t)) => Ok(t),
        Ok(Response::Ok) => Ok(String::new()),
        Ok(Response::Error { message, .. }) => Err(AdminError::Refused(message)),
        Ok(_) | Err(_) => Err(AdminError::Unexpected { path }),
    }
}

/// Writes `text` to standard output; a reader that went away (`pager stats | head -1`) is not
/// an error.
fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve {
            root,
            resident_pages,
            no_image_cache,
            paging_pages,
            spin_us,
            socket_mode,
            socket_group,
            goofy_retain_mb,
            catalog,
            listen,
            advertise,
            cell,
            lease_ttl,
            remote_timeout,
            paging_server,
            metrics_listen,
            tls,
        } => daemon::serve(ServeConfig {
            root,
            socket: cli.socket,
            resident_pages,
            cache_images: !no_image_cache,
            paging_pages,
            spin: Duration::from_micros(spin_us),
            socket_mode,
            socket_group,
            goofy: GoofyConfig {
                retain_bytes: goofy_retain_mb << 20,
                transport: tls.transport()?,
                ..GoofyConfig::default()
            },
            cell: match catalog {
                Some(url) => Some(config::CellConfig {
                    endpoints: clu_cell::parse_catalog(&url)?,
                    site: tls.site().unwrap_or_default().to_owned(),
                    advertise: match advertise {
                        Some(a) => a,
                        None => check_address(listen.as_deref().unwrap_or_default())?,
                    },
                    listen: check_address(&listen.unwrap_or_default())?,
                    cell,
                    lease_ttl,
                    remote_timeout: Duration::from_secs(remote_timeout.max(1)),
                }),
                None => None,
            },
            paging_server: paging_server.map(|address| config::PagingServerConfig {
                address,
                site: tls.site().unwrap_or_default().to_owned(),
                timeout: Duration::from_secs(remote_timeout.max(1)),
            }),
            metrics_listen,
        })?,
        Command::MemoryServer { listen, pages, tls } => {
            let transport = tls.transport()?;
            transport.check()?;
            let listener = std::net::TcpListener::bind(&listen)
                .map_err(|e| format!("cannot listen on {listen}: {e}; pass another --listen HOST:PORT (is another server on that port?)"))?;
            transport.check_listen(&listener.local_addr()?)?;
            daemon::reload_on_sighup(transport.clone())?;
            let me = tls.site().unwrap_or("memory-server").to_owned();
            tracing::info!(listen = %listener.local_addr()?, pages, "memory server ready");
            clu_remote::memory::serve(listener, transport, me, pages);
        }
        Command::BackupServer {
            root,
            listen,
            metrics_listen,
            tls,
        } => {
            let transport = tls.transport()?;
            transport.check()?;
            let server = clu_goofy::backup::BackupServer::open(&root)?;
            let listener = std::net::TcpListener::bind(&listen)
                .map_err(|e| format!("cannot listen on {listen}: {e}; pass another --listen HOST:PORT (is another server on that port?)"))?;
            transport.check_listen(&listener.local_addr()?)?;
            daemon::reload_on_sighup(transport.clone())?;
            tracing::info!(root = %root.display(), listen = %listener.local_addr()?, "backup server ready");
            let server = std::sync::Arc::new(server);
            if let Some(m) = &metrics_listen {
                daemon::start_backup_metrics(server.clone(), m)?;
            }
            server.serve(listener, transport)?;
        }
        Command::Keys(KeysCommand::Init { dir, days }) => {
            let (crt, key) = clu_transport::keys::init(&dir, days)?;
            out(&format!("wrote {} and {}\n", crt.display(), key.display()))?;
        }
        Command::Keys(KeysCommand::Issue {
            dir,
            name,
            hosts,
            days,
        }) => {
            let what = clu_transport::keys::Issue::for_days(&name, &hosts, days);
            let (crt, key) = clu_transport::keys::issue(&dir, &what)?;
            out(&format!("wrote {} and {}\n", crt.display(), key.display()))?;
        }
        Command::Check => {
            let probe = uffd_probe::probe();
            out(&format!("{probe}\n"))?;
            probe
                .result
                .map_err(|_| "userfaultfd is not usable here: follow the advice above, then run `pager check` again")?;
        }
        Command::Man { dir } => {
            for page in manual::write_man_pages(<Cli as clap::CommandFactory>::command(), &dir)? {
                out(&format!("wrote {}\n", page.display()))?;
            }
        }
        Command::Completions { shell } => manual::completions(
            <Cli as clap::CommandFactory>::command(),
            shell,
            &mut std::io::stdout(),
        )?,
        Command::Top { interval } => top::run(&cli.socket, Duration::from_secs_f64(interval))?,
        Command::Admin(cmd) => out(&admin(&cli.socket, &cmd)?)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        matches!(
            cli.command,
            Command::Serve { .. } | Command::BackupServer { .. }
        ),
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut said = e.to_string();
            eprintln!("pager: error: {said}");
            let mut source = e.source();
            while let Some(s) = source {
                // Many messages quote their cause already: say it once.
                let text = s.to_string();
                if !said.contains(&text) {
                    eprintln!("  caused by: {text}");
                    said = text;
                }
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
