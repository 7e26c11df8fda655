//! The cluster calls (thesis B1-B10) for Rust programs; the C ABI (`clu.h`) wraps these.
//!
//! A process has one connection to the pager, opened on first use (socket: `CLU_PAGER_SOCKET`
//! or [`crate::DEFAULT_SOCKET`]), and maps each cluster at most once. Cluster memory is handed
//! out as [`Region`]s, handles that copy in and out with bounds-checked volatile accesses,
//! because the memory is shared with other processes and with the pager, so Rust references
//! into it would promise what nobody can keep. A region's mapping lives as long as a handle of
//! it does; after [`unmap`] the pager no longer serves it.
//!
//! If the pager dies, every call about a cluster mapped through the lost connection returns
//! [`ErrorCode::Unavailable`], and a fault on a page of such a cluster that this process has not
//! mapped yet raises SIGBUS (see [`crate::watcher`]); the next call about another cluster opens
//! a new connection, to a restarted pager.

use std::collections::HashMap;
use std::sync::Mutex;

use clu_proto::protocol::{Request, MAX_GROUP};
use clu_sys::sync::lock;

use crate::session::Session;
use crate::{ClusterId, ClusterKind, ErrorCode, MapMode, Region};

/// A failed cluster call: a code (shared with the C ABI) and a message for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CluError {
    /// The code.
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
}

impl CluError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> CluError {
        CluError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Default)]
struct Shim {
    session: Option<Session>,
    /// Clusters mapped through a connection that was lost, and their regions (still mapped:
    /// pages this process had mapped stay readable; the others raise SIGBUS).
    lost: HashMap<ClusterId, Vec<Region>>,
}

impl Shim {
    /// Moves the clusters of a lost connection to `lost`.
    fn reap(&mut self) {
        if self.session.as_ref().is_some_and(Session::dead) {
            let dead = self.session.take().map(|s| s.all_regions());
            self.lost.extend(dead.unwrap_or_default());
        }
    }
}

static SHIM: Mutex<Option<Shim>> = Mutex::new(None);

fn gone(id: ClusterId) -> CluError {
    CluError::new(
        ErrorCode::Unavailable,
        format!(
            "the pager is unavailable: the connection through which cluster {id} was mapped was lost; map it again once the pager is back"
        ),
    )
}

/// Runs `f` on the live session, opening one if needed. `about` is the cluster the call is
/// about, if any: a cluster mapped through a lost connection gets "unavailable".
fn with<T>(
    about: Option<ClusterId>,
    f: impl FnOnce(&mut Session) -> Result<T, CluError>,
) -> Result<T, CluError> {
    with_each(about.as_slice(), f)
}

/// As [`with`], about several clusters.
fn with_each<T>(
    about: &[ClusterId],
    f: impl FnOnce(&mut Session) -> Result<T, CluError>,
) -> Result<T, CluError> {
    let mut guard = lock(&SHIM);
    let shim = guard.get_or_insert_with(Shim::default);
    shim.reap();
    if let Some(&id) = about.iter().find(|id| shim.lost.contains_key(id)) {
        return Err(gone(id));
    }
    if shim.session.is_none() {
        shim.session = Some(Session::connect()?);
    }
    let session = shim.session.as_mut().expect("just set");
    f(session)
}

/// `clu_CreateMap`: creates a cluster of `npages` zero pages in volume `vol`, owned by the
/// calling user, and maps it here.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, region) = api::create_map(1, 4, ClusterKind::Protected)?;
/// region.write(0, b"hello");
/// api::commit(id)?; // "hello" is stored, atomically
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn create_map(
    vol: u16,
    npages: u64,
    kind: ClusterKind,
) -> Result<(ClusterId, Region), CluError> {
    with(None, |s| s.create_map(vol, npages, kind))
}

/// `clu_Map`: maps the whole current cluster; pages load on demand.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind, MapMode};
/// let (id, region) = api::create_map(1, 1, ClusterKind::Protected)?;
/// region.write(0, b"kept");
/// api::commit(id)?;
/// api::unmap(id)?;
/// // Later, or in another process: the committed pages come back.
/// let region = api::map(id, MapMode::ReadOnly)?;
/// let mut word = [0u8; 4];
/// region.read(0, &mut word);
/// assert_eq!(&word, b"kept");
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn map(id: ClusterId, mode: MapMode) -> Result<Region, CluError> {
    let r = with(None, |s| s.map(id, mode));
    if r.is_ok() {
        if let Some(shim) = lock(&SHIM).as_mut() {
            shim.lost.remove(&id);
        }
    }
    r
}

/// `clu_Unmap`: unmaps the cluster here. The last unmap on the machine writes it back.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, _region) = api::create_map(1, 1, ClusterKind::Protected)?;
/// api::unmap(id)?; // the pager no longer serves this process's mapping
/// # Ok(()) }
/// ```
pub fn unmap(id: ClusterId) -> Result<(), CluError> {
    with(Some(id), |s| s.unmap(id))
}

/// `clu_Resize`: adds `add` zero pages to the cluster and maps them here (a new region).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, first) = api::create_map(1, 2, ClusterKind::Protected)?;
/// let more = api::resize(id, 3)?; // 3 zero pages, mapped as a second region
/// assert_eq!((first.len(), more.len()), (2 * 4096, 3 * 4096));
/// more.write(0, b"grown");
/// api::commit(id)?;
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn resize(id: ClusterId, add: u64) -> Result<Region, CluError> {
    with(Some(id), |s| s.resize(id, add))
}

/// `clu_Extend`: maps here the pages other processes added; `None` when there are none.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, _region) = api::create_map(1, 1, ClusterKind::Protected)?;
/// // Nobody else added pages: nothing new to map.
/// assert!(api::extend(id)?.is_none());
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn extend(id: ClusterId) -> Result<Option<Region>, CluError> {
    with(Some(id), |s| s.extend(id))
}

/// `clu_Commit`: writes the cluster's modified pages back atomically; returns once validated.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, region) = api::create_map(1, 1, ClusterKind::Protected)?;
/// region.write_u8(0, 42);
/// api::commit(id)?; // returns once the page is validated in the journal
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn commit(id: ClusterId) -> Result<(), CluError> {
    with(Some(id), |s| s.commit(id))
}

/// `clu_CommitGroup`: writes the modified pages of every cluster of `ids` back atomically,
/// as one snapshot of them all: when it returns `Ok` all of them are committed, when it fails
/// none is, whatever crashes. Each cluster must be mapped read-write here and named once; at
/// most [`MAX_GROUP`] clusters. Clusters of several volumes of the pager's site are committed
/// by two-phase commit (reliable and remote volumes take part only in groups of their own
/// volume, in this release).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// // An index in one cluster, the data it points to in another: both or neither.
/// let (index, idx) = api::create_map(1, 1, ClusterKind::Protected)?;
/// let (data, dat) = api::create_map(1, 4, ClusterKind::Protected)?;
/// dat.write_u8(3 * 4096, 7);
/// idx.write_u8(0, 3);
/// api::commit_group(&[index, data])?;
/// api::unmap(index)?;
/// api::unmap(data)?;
/// # Ok(()) }
/// ```
pub fn commit_group(ids: &[ClusterId]) -> Result<(), CluError> {
    if ids.is_empty() || ids.len() > MAX_GROUP {
        return Err(CluError::new(
            ErrorCode::Invalid,
            format!(
                "a commit group names 1 to {MAX_GROUP} clusters, not {}",
                ids.len()
            ),
        ));
    }
    with_each(ids, |s| s.commit_group(ids))
}

/// `clu_Abort`: discards every modification since the last commit.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, region) = api::create_map(1, 1, ClusterKind::Protected)?;
/// region.write_u8(0, 1);
/// api::commit(id)?;
/// region.write_u8(0, 2);
/// api::abort(id)?; // back to the last commit
/// assert_eq!(region.read_u8(0), 1);
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn abort(id: ClusterId) -> Result<(), CluError> {
    with(Some(id), |s| s.abort(id))
}

/// The regions of a cluster mapped here, in the order they were mapped (also when the pager
/// was lost since: the memory stays mapped until the process ends).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, _first) = api::create_map(1, 1, ClusterKind::Protected)?;
/// api::resize(id, 1)?;
/// assert_eq!(api::regions(id)?.len(), 2);
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn regions(id: ClusterId) -> Result<Vec<Region>, CluError> {
    {
        let mut guard = lock(&SHIM);
        let shim = guard.get_or_insert_with(Shim::default);
        shim.reap();
        if let Some(r) = shim.lost.get(&id) {
            return Ok(r.clone());
        }
    }
    with(Some(id), |s| s.regions(id))
}

/// `clu_Grant`: the owner lets `uid` map the cluster, read-write or read-only.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind, MapMode};
/// let (id, _region) = api::create_map(1, 1, ClusterKind::Shareable)?;
/// api::grant(id, 65534, MapMode::ReadOnly)?; // user nobody may now map it read-only
/// api::revoke(id, 65534)?;
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn grant(id: ClusterId, uid: u32, mode: MapMode) -> Result<(), CluError> {
    with(None, |s| s.simple(&Request::Grant { id, uid, mode }))
}

/// `clu_Revoke`: the owner withdraws `uid`'s grant.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind, MapMode};
/// let (id, _region) = api::create_map(1, 1, ClusterKind::Shareable)?;
/// api::grant(id, 65534, MapMode::ReadWrite)?;
/// api::revoke(id, 65534)?; // nobody's next map is refused
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn revoke(id: ClusterId, uid: u32) -> Result<(), CluError> {
    with(None, |s| s.simple(&Request::Revoke { id, uid }))
}

/// `clu_Promote`: makes a temporary cluster persistent now and commits its current image.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, region) = api::create_map(1, 1, ClusterKind::Temporary)?;
/// region.write(0, b"scratch that became data");
/// api::promote(id)?; // persistent from now on, its current image committed
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn promote(id: ClusterId) -> Result<(), CluError> {
    with(None, |s| s.simple(&Request::Promote { id }))
}

/// `clu_Owner`: the uid that owns the cluster (where to ask for a grant after a refusal).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, _region) = api::create_map(1, 1, ClusterKind::Protected)?;
/// assert_eq!(api::owner(id)?, nix::unistd::getuid().as_raw());
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn owner(id: ClusterId) -> Result<u32, CluError> {
    with(None, |s| s.owner(id))
}

/// `clu_Where`: the site of the cell holding the cluster's image now, or "" if none (or if the
/// pager is a site on its own). After a map refused with [`ErrorCode::Remote`], the work is to
/// run there (the thesis's *extension*).
///
/// [`ErrorCode::Remote`]: clu_proto::ErrorCode::Remote
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind};
/// let (id, _region) = api::create_map(1, 1, ClusterKind::Protected)?;
/// // A pager on its own is no cell: no site to name.
/// println!("held at {:?}", api::where_is(id)?);
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
pub fn where_is(id: ClusterId) -> Result<String, CluError> {
    with(None, |s| s.where_is(id))
}

/// Sends an administration command (`["status"]`, `["vol", "list"]`, ...) to the pager and
/// returns its text answer.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::api;
/// let status = api::admin(vec!["status".into()])?;
/// assert!(status.contains("resident"));
/// # Ok(()) }
/// ```
pub fn admin(words: Vec<String>) -> Result<String, CluError> {
    with(None, |s| s.admin(words))
}
