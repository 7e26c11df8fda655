//! Goofy: the reliable storage service (thesis VII.3). A reliable volume is mounted by one
//! manager, which holds its primary copy; backup servers keep images of it, kept up to date by
//! asynchronous propagation of the modified whole pages of each commit.
//!
//! - [`wire`]: the messages between a primary and its backups.
//! - [`primary`]: the reliable service in the driver table (`ssf`) and its propagation.
//! - [`backup`]: `pager backup-server`.
//! - [`conf`]: `goofy.conf`, what makes a volume reliable.
//!
//! Status (see the README): propagation, acknowledgements, fencing by epoch and `sync K` work;
//! catch-up from the journal after a backup's outage, full copies, and `vol restore` do not yet.

pub mod backup;
pub mod conf;
pub mod primary;
pub mod wire;
