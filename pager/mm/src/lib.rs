//! The memory manager (*gérant de mémoire*) of one site: what resolves every fault on a
//! cluster mapped here, and writes modified pages back through the storage service.
//!
//! - [`page_state`]: the page state machine (thesis D6-D12), a pure function; every page
//!   transition of an image goes through it.
//! - [`site`]: what a site's images share: the resident budget, the paging partition
//!   ([`paging`], thesis D4), the statistics, reclaim from other images.
//! - [`image`]: one cluster's image (its memfd, page states, mappers), with the fault path, the
//!   eviction path and write-back, each carrying out its family of actions in one place.
//! - [`manager`]: the table of images and the cluster operations (thesis B1-B10).
//! - [`regions`]: a process's regions and the lookup from a fault address to a page;
//!   [`types`]: page numbers, user addresses, connections; [`runs`]: runs of pages.
//! - [`rights`]: who may map a cluster, and how (thesis F2-F8), a pure function.

mod error;
pub mod histogram;
pub mod image;
pub mod manager;
pub mod page_state;
pub mod paging;
pub mod placement;
pub mod regions;
pub mod rights;
pub mod runs;
pub mod site;
pub mod types;

pub use error::Refusal;
pub use image::{sigbus, Fault, Image, ImageView};
pub use manager::{CacheScope, Manager, MapReply, MAX_CLUSTER_PAGES};
pub use regions::{RegionError, RegionSet, UserRegion};
pub use site::{Served, Site, Stats};
pub use types::{ConnId, PageNo, UserAddr};
