//! The shim's settings, read from the environment in one place, once per connection.

use std::path::PathBuf;

/// Where the pager listens unless `CLU_PAGER_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/clu-pager.sock";
/// The environment variable naming the pager's socket.
pub const SOCKET_ENV: &str = "CLU_PAGER_SOCKET";
/// Set to `1` for write-protect-async mode: first writes to clean pages cost no round trip to
/// the pager (the kernel resolves them; the pager collects written pages with `PAGEMAP_SCAN`
/// at commit and eviction). The price: a commit is a point-in-time image only if no thread of
/// the process writes to the cluster while it runs (see the README).
pub const WP_ASYNC_ENV: &str = "CLU_WP_ASYNC";

/// What the environment asks of the shim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The pager's socket.
    pub socket: PathBuf,
    /// Write-protect-async mode.
    pub wp_async: bool,
}

impl Config {
    /// The settings of this process's environment.
    pub fn from_env() -> Config {
        Config {
            socket: socket_path(),
            wp_async: std::env::var_os(WP_ASYNC_ENV).is_some_and(|v| v == "1"),
        }
    }
}

/// The socket path the shim uses: `CLU_PAGER_SOCKET`, or [`DEFAULT_SOCKET`].
pub fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}
