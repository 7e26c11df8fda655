//! Cluster and volume ids (thesis C1, C4): a cluster id is `vol_id << 16 | clu_id`, both 16 bits.
//! The top bit of `vol_id` marks a volume of another cell.

use std::fmt;
use std::str::FromStr;

/// A volume id: 15 bits unique within the cell, plus the top bit for volumes of another cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolId(pub u16);

/// A cluster's number inside its volume (64K clusters per volume).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CluId(pub u16);

/// A cluster's full, physical name: its volume and its number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u32);

impl VolId {
    /// The bit that marks a volume of another cell.
    pub const FOREIGN_BIT: u16 = 0x8000;

    /// Whether this volume belongs to another cell.
    pub fn is_foreign(self) -> bool {
        self.0 & Self::FOREIGN_BIT != 0
    }
}

impl ClusterId {
    /// The id of cluster `clu` of volume `vol`.
    pub fn new(vol: VolId, clu: CluId) -> Self {
        ClusterId(u32::from(vol.0) << 16 | u32::from(clu.0))
    }

    /// The volume part.
    pub fn vol(self) -> VolId {
        VolId((self.0 >> 16) as u16)
    }

    /// The cluster part.
    pub fn clu(self) -> CluId {
        CluId(self.0 as u16)
    }
}

impl fmt::Display for VolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}", self.0)
    }
}

impl fmt::Display for ClusterId {
    /// `vvvv:cccc` in hex, e.g. `0001:002a`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vol().0, self.clu().0)
    }
}

/// A string that is not an id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cluster id: write it as VOL:CLU in hex (e.g. 0001:002a) or as one 32-bit number (e.g. 0x0001002a or 65578)")]
pub struct IdError(pub String);

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl FromStr for ClusterId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError(s.to_owned());
        if let Some((v, c)) = s.split_once(':') {
            let v = u16::from_str_radix(v, 16).map_err(|_| err())?;
            let c = u16::from_str_radix(c, 16).map_err(|_| err())?;
            return Ok(ClusterId::new(VolId(v), CluId(c)));
        }
        parse_u32(s).map(ClusterId).ok_or_else(err)
    }
}

/// What a cluster is for (thesis F7-F9, G): it fixes who may map it and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ClusterKind {
    /// Data: mapped only by the owner and those the owner granted; read-write by default.
    Protected = 0,
    /// Code and stable data: any user may map it read-only, the owner read-write.
    Shareable = 1,
    /// Mapped and shared like any cluster but never written to storage unless promoted.
    Temporary = 2,
}

impl ClusterKind {
    /// The kind with this numeric code (`CLU_PROTECTED` = 0, ...), if any.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(ClusterKind::Protected),
            1 => Some(ClusterKind::Shareable),
            2 => Some(ClusterKind::Temporary),
            _ => None,
        }
    }

    /// The lower-case name used on command lines and in listings.
    pub fn name(self) -> &'static str {
        match self {
            ClusterKind::Protected => "protected",
            ClusterKind::Shareable => "shareable",
            ClusterKind::Temporary => "temporary",
        }
    }
}

/// A word that is not a cluster kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown cluster kind `{0}`: use protected, shareable or temporary")]
pub struct UnknownKind(pub String);

impl FromStr for ClusterKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        [
            ClusterKind::Protected,
            ClusterKind::Shareable,
            ClusterKind::Temporary,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_and_join() {
        let id = ClusterId::new(VolId(0x8001), CluId(0x002a));
        assert_eq!(id.0, 0x8001_002a);
        assert_eq!(id.vol(), VolId(0x8001));
        assert!(id.vol().is_foreign());
        assert_eq!(id.clu(), CluId(42));
        assert_eq!(id.to_string(), "8001:002a");
    }

    #[test]
    fn ids_parse_in_every_documented_form() {
        let id = ClusterId(0x0001_002a);
        assert_eq!("0001:002a".parse(), Ok(id));
        assert_eq!("1:2a".parse(), Ok(id));
        assert_eq!("0x0001002a".parse(), Ok(id));
        assert_eq!("65578".parse(), Ok(id));
        for bad in ["", ":", "1:", "x:1", "10000:1", "0x", "-1", "4294967296"] {
            assert!(bad.parse::<ClusterId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_round_trip() {
        for code in 0..3 {
            let k = ClusterKind::from_code(code).unwrap();
            assert_eq!(k as u32, code);
            assert_eq!(k.name().parse::<ClusterKind>(), Ok(k));
        }
        assert_eq!(ClusterKind::from_code(3), None);
        assert!("nope".parse::<ClusterKind>().is_err());
    }
}
