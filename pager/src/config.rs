//! The settings the daemons run with, built in one place from the command line (and the
//! environment variables clap reads for it). Nothing deeper in the code reads the
//! environment.

use std::path::PathBuf;
use std::time::Duration;

use clu_goofy::GoofyConfig;

pub use crate::daemon::CellConfig;

/// The settings of `pager serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The storage root.
    pub root: PathBuf,
    /// The socket path.
    pub socket: PathBuf,
    /// The resident budget, in pages, over all clusters.
    pub resident_pages: u64,
    /// Whether a cluster's clean image stays resident after its last unmap (the site cache).
    pub cache_images: bool,
    /// The paging partition's capacity, in pages.
    pub paging_pages: u32,
    /// How long a fault thread keeps polling for the next fault before it sleeps.
    pub spin: Duration,
    /// The socket's permission bits: who may connect at all (rights are checked per request).
    pub socket_mode: u32,
    /// The socket's group, if not the pager's.
    pub socket_group: Option<nix::unistd::Gid>,
    /// The reliable service's settings (and the journal settings of every volume).
    pub goofy: GoofyConfig,
    /// The cell this site joins (`--catalog`); `None`: a site on its own.
    pub cell: Option<CellConfig>,
    /// Page evicted dirty pages to this memory server (`--paging-server HOST:PORT`) instead
    /// of the local paging file.
    pub paging_server: Option<PagingServerConfig>,
    /// Serve `/metrics` (Prometheus) on this address (`--metrics-listen HOST:PORT`).
    pub metrics_listen: Option<String>,
}

/// `--paging-server`: a memory server as the paging partition (thesis K2).
#[derive(Clone, Debug)]
pub struct PagingServerConfig {
    /// Its address, `HOST:PORT`.
    pub address: String,
    /// This site's name, as its certificate names it.
    pub site: String,
    /// How long a request waits for its answer.
    pub timeout: Duration,
}
