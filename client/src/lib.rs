//! The interface component (*composant d'interface*) of the cluster machine: what programs link.
//!
//! - [`api`]: the cluster calls (`clu_CreateMap`, `clu_Map`, `clu_Unmap`, `clu_Resize`,
//!   `clu_Extend`, `clu_Commit`, `clu_Abort`) for Rust programs; the C ABI wraps them (crate
//!   `clu-capi`, header `client/include/clu.h`).
//! - The vocabulary shared with the pager: cluster ids and kinds, error codes, the wire protocol
//!   ([`proto`]) and its framing with attached descriptors ([`channel`]).
//! - [`sys`]: the thin raw layer, every `unsafe` system call of the fault path ([`uffd`]).

pub mod api;
pub mod channel;
mod error_code;
mod ids;
pub mod proto;
mod session;
pub mod sys;
pub mod watcher;

pub use api::{CluError, Region};
pub use error_code::ErrorCode;
pub use ids::{CluId, ClusterId, ClusterKind, IdError, VolId, PAGE_SIZE};
pub use proto::MapMode;
pub use session::{socket_path, DEFAULT_SOCKET, SOCKET_ENV, WP_ASYNC_ENV};
pub use sys::uffd;

/// Locks `m`, ignoring poisoning: every structure the shim guards is updated by whole
/// assignments, so a panic elsewhere leaves it consistent.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
