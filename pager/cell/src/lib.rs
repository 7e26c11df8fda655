//! The cell's catalog on etcd: what the memory managers of several sites must agree on (thesis
//! IV.2, requirements A5, A6, C5, C8, M2 in the digest), kept by an existing distributed engine
//! rather than by the pagers themselves.
//!
//! - **Sites** join with a lease ([`Cell::join`]): `alive/<name>` exists while the site renews
//!   it; a site whose pager dies or is cut off from etcd for longer than the TTL disappears from
//!   the live list, and with it every lock it held. A site added or removed at run time (A6) is
//!   seen by the others in [`Cell::sites`] (and by watches, later).
//! - **Volume ids** are allocated across the cell with one etcd transaction
//!   ([`Cell::create_volume`]): the counter and the new record change together or not at all,
//!   so no id is ever handed out twice, whatever runs concurrently.
//! - **Mount = lock** (M2, C8): [`Session::mount`] creates `mounts/<id>` bound to the site's
//!   lease, only if it does not exist; a second site gets [`CellError::MountedElsewhere`]
//!   naming the holder. The revision of that creation is the volume's **fencing epoch**: every
//!   later mount of the volume, by anyone, has a higher one (etcd's revisions are totally
//!   ordered), which is what failover builds on.
//!
//! Decisions (the next id, key layout, record decoding) are pure functions in [`keys`] and
//! [`records`]; [`Cell`] carries them out against etcd. The client is async (`etcd-client`, on
//! tokio); this crate owns a small runtime and offers a blocking API, so the pager's threads
//! stay plain threads. No lock of this crate is held across a call to etcd.

mod cell;
mod error;
pub mod failover;
pub mod keys;
pub mod members;
pub mod records;
mod session;

pub use cell::{parse_catalog, Cell};
pub use error::CellError;
pub use members::Members;
pub use records::{Failover, SiteRecord, SiteStatus, VolumeRecord, VolumeStatus};
pub use session::Session;
