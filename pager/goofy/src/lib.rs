//! Goofy: the reliable storage service (thesis VII.3), a storage service of the driver table
//! (`ssf`) built on the fast local one. A reliable volume is mounted by one manager, which holds
//! its primary copy; backup servers keep images of it, kept up to date by shipping the primary's
//! journal.
//!
//! - [`primary`]: the service ([`Ssf`]) and its mounted volumes; each backup is fed by a
//!   [`link`] that ships the primary's journal, after a full copy when it must.
//! - [`resume`]: where a backup resumes (from the journal or a full copy), a pure decision.
//! - [`backup`]: `pager backup-server`, and its [`state`] file.
//! - [`restore`]: `pager vol restore`: rebuild a volume from its freshest backup, fencing the
//!   primary it replaces.
//! - [`wire`]: the messages between a primary, its backups and a restorer; [`position`]: where a
//!   backup's image stands; [`copy`]: the chunks of a full copy.
//! - [`conf`]: `goofy.conf`, what makes a volume reliable; [`GoofyConfig`], the service's
//!   settings (from the daemon's command line).

pub mod backup;
pub mod conf;
mod config;
pub mod copy;
mod error;
pub mod link;
pub mod position;
pub mod primary;
pub mod restore;
pub mod resume;
pub mod state;
pub mod wire;

pub use config::GoofyConfig;
pub use error::GoofyError;
pub use primary::{BackupStatus, ReliableSpec, Replication, Ssf};
