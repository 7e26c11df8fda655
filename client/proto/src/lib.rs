//! The vocabulary shared by programs, the pager and its peers (the bottom floor with the
//! journal and the raw layer):
//!
//! - cluster and volume ids and cluster kinds (thesis C1, C4, F7-F9);
//! - [`ErrorCode`], the codes of the cluster calls, shared with the C ABI;
//! - [`codec`], the one little-endian reader and writer of the project's formats;
//! - [`protocol`], the messages between programs and the pager, and [`channel`], their framing
//!   over a Unix socket with attached file descriptors.

pub mod channel;
pub mod codec;
mod error_code;
pub mod frame;
mod ids;
pub mod protocol;

pub use clu_sys::PAGE_SIZE;
pub use error_code::ErrorCode;
pub use ids::{CluId, ClusterId, ClusterKind, IdError, UnknownKind, VolId};
pub use protocol::MapMode;
