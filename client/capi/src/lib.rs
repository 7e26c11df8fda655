//! The C ABI of the cluster calls (`client/include/clu.h`): thin wrappers over
//! [`client::api`]. Every function returns 0 or a negative `CLU_E*` code; no panic crosses the
//! boundary (one would be a bug, reported as `CLU_EIO`).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use client::{api, ClusterId, ClusterKind, ErrorCode, MapMode, Region};

/// `clu_id_t`.
pub type CluIdT = u32;

// `CLU_MAX_GROUP` in clu.h.
const _: () = assert!(client::MAX_GROUP == 256);

fn code(e: ErrorCode) -> c_int {
    e as i32
}

fn guard(f: impl FnOnce() -> Result<(), ErrorCode>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => code(e),
        Err(_) => code(ErrorCode::Io),
    }
}

/// Stores `v` through `p` if `p` is not null.
///
/// # Safety
/// `p` is null or valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: the caller guarantees `p` is valid for writes when not null.
        unsafe { p.write(v) };
    }
}

fn ptr(r: &Region) -> *mut c_void {
    r.as_ptr().cast()
}

/// `clu_CreateMap`.
///
/// # Safety
/// `id` and `addr` are null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn clu_CreateMap(
    vol_id: u16,
    npages: usize,
    kind: c_int,
    id: *mut CluIdT,
    addr: *mut *mut c_void,
) -> c_int {
    guard(|| {
        let kind = u32::try_from(kind)
            .ok()
            .and_then(ClusterKind::from_code)
            .ok_or(ErrorCode::Invalid)?;
        let (cid, region) = api::create_map(vol_id, npages as u64, kind).map_err(|e| e.code)?;
        // SAFETY: the caller passes null or valid pointers.
        unsafe {
            put(id, cid.0);
            put(addr, ptr(&region));
        }
        Ok(())
    })
}

/// `clu_Map`.
///
/// # Safety
/// `addr` and `npages` are null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn clu_Map(
    id: CluIdT,
    mode: c_int,
    addr: *mut *mut c_void,
    npages: *mut usize,
) -> c_int {
    guard(|| {
        let mode = mode_of(mode)?;
        let region = api::map(ClusterId(id), mode).map_err(|e| e.code)?;
        // SAFETY: the caller passes null or valid pointers.
        unsafe {
            put(addr, ptr(&region));
            put(npages, region.npages as usize);
        }
        Ok(())
    })
}

/// `clu_Unmap`.
#[no_mangle]
pub extern "C" fn clu_Unmap(id: CluIdT) -> c_int {
    guard(|| api::unmap(ClusterId(id)).map_err(|e| e.code))
}

/// `clu_Resize`.
///
/// # Safety
/// `region` is null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn clu_Resize(
    id: CluIdT,
    add_npages: usize,
    region: *mut *mut c_void,
) -> c_int {
    guard(|| {
        let r = api::resize(ClusterId(id), add_npages as u64).map_err(|e| e.code)?;
        // SAFETY: the caller passes null or a valid pointer.
        unsafe { put(region, ptr(&r)) };
        Ok(())
    })
}

/// `clu_Extend`: `*npages = 0` when nothing is new.
///
/// # Safety
/// `region` and `npages` are null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn clu_Extend(
    id: CluIdT,
    region: *mut *mut c_void,
    npages: *mut usize,
) -> c_int {
    guard(|| {
        let r = api::extend(ClusterId(id)).map_err(|e| e.code)?;
        // SAFETY: the caller passes null or valid pointers.
        unsafe {
            put(region, r.as_ref().map_or(std::ptr::null_mut(), ptr));
            put(npages, r.as_ref().map_or(0, |r| r.npages as usize));
        }
        Ok(())
    })
}

/// `clu_Commit`.
#[no_mangle]
pub extern "C" fn clu_Commit(id: CluIdT) -> c_int {
    guard(|| api::commit(ClusterId(id)).map_err(|e| e.code))
}

/// `clu_CommitGroup`.
///
/// # Safety
/// `ids` is valid for reads of `n` ids (it may be null when `n` is 0).
#[no_mangle]
pub unsafe extern "C" fn clu_CommitGroup(ids: *const CluIdT, n: usize) -> c_int {
    guard(|| {
        if n == 0 || ids.is_null() || n > client::MAX_GROUP {
            // Refused by the API with the same code, before anything is read.
            return api::commit_group(&[]).map_err(|e| e.code);
        }
        // SAFETY: the caller guarantees `ids` is valid for reads of `n` ids, and `n` is
        // bounded above (at most MAX_GROUP ids are read).
        let ids = unsafe { std::slice::from_raw_parts(ids, n) };
        let ids: Vec<ClusterId> = ids.iter().map(|&id| ClusterId(id)).collect();
        api::commit_group(&ids).map_err(|e| e.code)
    })
}

/// `clu_Abort`.
#[no_mangle]
pub extern "C" fn clu_Abort(id: CluIdT) -> c_int {
    guard(|| api::abort(ClusterId(id)).map_err(|e| e.code))
}

fn mode_of(mode: c_int) -> Result<MapMode, ErrorCode> {
    match mode {
        0 => Ok(MapMode::ReadWrite),
        1 => Ok(MapMode::ReadOnly),
        _ => Err(ErrorCode::Invalid),
    }
}

/// `clu_Grant`: the owner lets `uid` map the cluster in `mode` (`CLU_RDWR`, `CLU_RDONLY`).
#[no_mangle]
pub extern "C" fn clu_Grant(id: CluIdT, uid: u32, mode: c_int) -> c_int {
    guard(|| api::grant(ClusterId(id), uid, mode_of(mode)?).map_err(|e| e.code))
}

/// `clu_Revoke`: the owner withdraws `uid`'s grant.
#[no_mangle]
pub extern "C" fn clu_Revoke(id: CluIdT, uid: u32) -> c_int {
    guard(|| api::revoke(ClusterId(id), uid).map_err(|e| e.code))
}

/// `clu_Promote`: a temporary cluster becomes persistent; its image is committed.
#[no_mangle]
pub extern "C" fn clu_Promote(id: CluIdT) -> c_int {
    guard(|| api::promote(ClusterId(id)).map_err(|e| e.code))
}

/// `clu_Owner`: the uid owning the cluster.
///
/// # Safety
/// `uid` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn clu_Owner(id: CluIdT, uid: *mut u32) -> c_int {
    guard(|| {
        let owner = api::owner(ClusterId(id)).map_err(|e| e.code)?;
        // SAFETY: the caller passes null or a valid pointer.
        unsafe { put(uid, owner) };
        Ok(())
    })
}

/// `clu_Where`: writes into `site` (at most `len` bytes, NUL-terminated, truncated if need be)
/// the name of the site holding the cluster's image now, or "" if none.
///
/// # Safety
/// `site` is null or valid for `len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn clu_Where(id: CluIdT, site: *mut c_char, len: usize) -> c_int {
    guard(|| {
        let name = api::where_is(ClusterId(id)).map_err(|e| e.code)?;
        if !site.is_null() && len > 0 {
            let n = name.len().min(len - 1);
            // SAFETY: the caller passes a buffer valid for `len` bytes; n + 1 <= len.
            unsafe {
                std::ptr::copy_nonoverlapping(name.as_ptr().cast::<c_char>(), site, n);
                site.add(n).write(0);
            }
        }
        Ok(())
    })
}

fn describe(err: c_int) -> &'static CStr {
    match ErrorCode::from_code(err) {
        Some(ErrorCode::NotFound) => c"no such cluster or volume",
        Some(ErrorCode::Io) => c"I/O error in the pager's storage",
        Some(ErrorCode::AccessDenied) => c"access denied",
        Some(ErrorCode::Busy) => c"busy: another operation on this cluster is in progress",
        Some(ErrorCode::Invalid) => c"invalid argument",
        Some(ErrorCode::NoSpace) => c"no space left in the volume or on the disk",
        Some(ErrorCode::Protocol) => c"protocol error between client and pager",
        Some(ErrorCode::Unavailable) => c"the pager is unavailable",
        Some(ErrorCode::Remote) => {
            c"the cluster's image is held on another site (clu_Where names it)"
        }
        None if err == 0 => c"success",
        None => c"unknown error",
    }
}

/// `clu_strerror`: a static description of a code.
#[no_mangle]
pub extern "C" fn clu_strerror(err: c_int) -> *const c_char {
    describe(err).as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_description_of_the_rust_api() {
        for c in ErrorCode::ALL {
            assert_eq!(describe(c as i32).to_str().unwrap(), c.describe());
        }
        assert_eq!(describe(0).to_str().unwrap(), "success");
        assert_eq!(describe(-9999).to_str().unwrap(), "unknown error");
    }

    #[test]
    fn bad_arguments_are_refused_before_any_connection() {
        // SAFETY: null out-pointers are allowed.
        unsafe {
            assert_eq!(
                clu_CreateMap(1, 1, 7, std::ptr::null_mut(), std::ptr::null_mut()),
                -22
            );
            assert_eq!(
                clu_Map(1, 5, std::ptr::null_mut(), std::ptr::null_mut()),
                -22
            );
        }
    }
}
