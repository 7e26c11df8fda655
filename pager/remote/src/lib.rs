//! Remote paging (thesis K1, K4; chapter IV.2): a process on site A maps a cluster of a volume
//! mounted on site B. A's memory manager serves the process as for a local cluster (the image
//! is on A), and reaches B's storage through a [`RemoteVolume`], one more entry of the driver
//! table's kind: every [`clu_storage::Volume`] primitive becomes one request to B over the
//! cell's authenticated transport, which B's [`server`] carries out on the volume it mounts.
//! A commit on A ships the dirty pages to B, which commits them through the volume's journal
//! (and its backups, for a reliable volume) and answers once they are validated there.
//!
//! - `wire`: the requests and answers, framed and checksummed; every decode failure is typed.
//! - `client`: [`RemoteVolume`], a pool of connections to the site that mounts the volume,
//!   found again in the cell's catalog after a failure.
//! - `server`: one thread per connection from another site.
//! - `memory`: remote memory paging (K2): the memory server and the paging partition that
//!   pages to it.
//!
//! B trusts A's pager for the caller's rights (A checks them against the descriptor, as for a
//! local cluster): what B checks is that A is a site of the cell (its certificate, signed by
//! the cell's CA, names the site it claims). `docs/threat-model.md` says what that trusts.

mod client;
pub mod memory;
pub mod peers;
pub mod server;
pub mod wire;

pub use client::{Holder, RemoteVolume, Resolve};
pub use peers::{PeerView, Peers};
