//! The interface component (*composant d'interface*) of the cluster machine: what programs link.
//!
//! - [`api`]: the cluster calls (`clu_CreateMap`, `clu_Map`, `clu_Unmap`, `clu_Resize`,
//!   `clu_Extend`, `clu_Commit`, `clu_Abort`, rights and kinds) for Rust programs; the C ABI
//!   wraps them (crate `clu-capi`, header `client/include/clu.h`).
//! - [`Region`]: a cluster's pages as this process maps them.
//! - [`watcher`]: the lifeline that turns the pager's death into SIGBUS instead of a hang.
//!
//! The vocabulary (ids, kinds, error codes, the protocol) is crate `clu-proto`'s, re-exported
//! here; every system call goes through crate `clu-sys`.

pub mod api;
mod config;
mod region;
mod session;
pub mod watcher;

pub use api::CluError;
pub use clu_proto::protocol::MAX_GROUP;
pub use clu_proto::{CluId, ClusterId, ClusterKind, ErrorCode, IdError, MapMode, VolId, PAGE_SIZE};
pub use config::{socket_path, Config, DEFAULT_SOCKET, SOCKET_ENV, WP_ASYNC_ENV};
pub use region::Region;
