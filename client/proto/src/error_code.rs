//! The error codes of the cluster calls, shared by the Rust API, the C ABI (`clu.h`) and the
//! wire protocol. Negative errno values, so C callers can also read them as `-errno`.

/// What a cluster call can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorCode {
    /// No such cluster or volume (`CLU_ENOTFOUND`).
    NotFound = -2,
    /// An I/O error in storage or paging (`CLU_EIO`).
    Io = -5,
    /// The caller may not map this cluster this way (`CLU_EACCES`).
    AccessDenied = -13,
    /// The operation waits for another to finish (`CLU_EBUSY`).
    Busy = -16,
    /// A malformed argument (`CLU_EINVAL`).
    Invalid = -22,
    /// The disk or the volume's capacity is full (`CLU_ENOSPC`).
    NoSpace = -28,
    /// The pager and this client do not understand each other (`CLU_EPROTO`).
    Protocol = -71,
    /// The pager is not running or the connection was lost (`CLU_EUNAVAIL`).
    Unavailable = -107,
    /// The cluster's image is held on another site of the cell (`CLU_EREMOTE`): `clu_Where`
    /// names it.
    Remote = -66,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::NotFound,
        ErrorCode::Io,
        ErrorCode::AccessDenied,
        ErrorCode::Busy,
        ErrorCode::Invalid,
        ErrorCode::NoSpace,
        ErrorCode::Protocol,
        ErrorCode::Unavailable,
        ErrorCode::Remote,
    ];

    /// The code with this value, if any.
    pub fn from_code(code: i32) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| *c as i32 == code)
    }

    /// A short description, as `clu_strerror` returns it.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "no such cluster or volume",
            ErrorCode::Io => "I/O error in the pager's storage",
            ErrorCode::AccessDenied => "access denied",
            ErrorCode::Busy => "busy: another operation on this cluster is in progress",
            ErrorCode::Invalid => "invalid argument",
            ErrorCode::NoSpace => "no space left in the volume or on the disk",
            ErrorCode::Protocol => "protocol error between client and pager",
            ErrorCode::Unavailable => "the pager is unavailable",
            ErrorCode::Remote => "the cluster's image is held on another site (clu_Where names it)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_negative_and_round_trip() {
        for c in ErrorCode::ALL {
            assert!((c as i32) < 0);
            assert_eq!(ErrorCode::from_code(c as i32), Some(c));
            assert!(!c.describe().is_empty());
        }
        assert_eq!(ErrorCode::from_code(0), None);
        assert_eq!(ErrorCode::AccessDenied as i32, -13);
    }
}
