//! The interface component (*composant d'interface*) of the cluster machine: what programs link.
//!
//! This first version holds the vocabulary shared by programs and the pager: cluster ids and
//! cluster kinds, and the thin raw layer over userfaultfd ([`uffd`]) that both sides of the fault
//! path use. The mapping calls (`clu_CreateMap`, `clu_Map`, ...) and the C ABI come with the
//! pager daemon.

mod error_code;
mod ids;
pub mod proto;
pub mod uffd;

pub use error_code::ErrorCode;
pub use ids::{CluId, ClusterId, ClusterKind, IdError, VolId, PAGE_SIZE};
