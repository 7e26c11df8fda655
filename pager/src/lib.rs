//! The memory manager (*gérant de mémoire*) of the cluster machine and its storage service.
//!
//! - [`daemon`]: `pager serve`, the external pager serving clusters to processes over a Unix
//!   socket and their userfaultfds.
//! - [`page_state`]: the page state machine (thesis D6-D12), a pure function.
//! - [`paging`]: the paging partition, where evicted dirty pages wait (thesis D4).
//! - [`storage`]: the storage service (thesis IV.2.2): volumes, clusters, the driver table, the
//!   catalog and mount table; writes go through the volume's journal (crate `journal`).
//! - [`goofy`]: the reliable storage service: backup servers kept by asynchronous propagation.
//! - [`admin`]: the administration commands, parsed by the CLI and by the daemon.
//! - [`uffd_probe`]: what this kernel's userfaultfd offers (`pager check`).

pub mod admin;
pub mod daemon;
pub mod goofy;
pub mod page_state;
pub mod paging;
pub mod storage;
mod sync;
pub mod uffd_probe;
