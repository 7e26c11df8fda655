//! The catalog (C5: which service keeps each volume, and where) and the mount table (C6: which
//! volumes to mount at every start), as text files at the storage root. Parsing and formatting are
//! pure; the root writes them atomically.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clu_proto::VolId;

const CATALOG_HEADER: &str = "# clu-pager catalog, format 1: vol_id(hex) name service location";
const MOUNTS_HEADER: &str =
    "# clu-pager mount table, format 1: one vol_id(hex) per line, mounted at every start";

/// A line of the catalog or mount table that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct CatalogError {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(line: usize, reason: String) -> CatalogError {
    CatalogError { line, reason }
}

/// One volume in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Its id.
    pub vol: VolId,
    /// Its administrative name.
    pub name: String,
    /// The storage service that keeps it (an entry of the driver table).
    pub service: String,
    /// Where the service keeps it, relative to the storage root.
    pub location: String,
}

/// The catalog: volumes by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// The entries.
    pub volumes: BTreeMap<VolId, CatalogEntry>,
}

/// Whether `name` is a valid volume name: 1 to 32 of `[A-Za-z0-9_.-]`, starting with a letter (so
/// that it is never mistaken for an id, and never names a path outside the root).
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn parse_vol(s: &str) -> Option<VolId> {
    (s.len() == 4)
        .then(|| u16::from_str_radix(s, 16).ok().map(VolId))
        .flatten()
}

impl Catalog {
    /// Parses the catalog text; a [`CatalogError`] names the first bad line.
    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let mut volumes = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [vol, name, service, location] = fields[..] else {
                return Err(bad(
                    i + 1,
                    format!("expected 4 fields, found {}", fields.len()),
                ));
            };
            let vol = parse_vol(vol).ok_or_else(|| bad(i + 1, format!("bad volume id `{vol}`")))?;
            if !valid_name(name) {
                return Err(bad(i + 1, format!("bad volume name `{name}`")));
            }
            if !valid_name(location) {
                return Err(bad(i + 1, format!("bad location `{location}`")));
            }
            let entry = CatalogEntry {
                vol,
                name: name.to_owned(),
                service: service.to_owned(),
                location: location.to_owned(),
            };
            if volumes.values().any(|e: &CatalogEntry| e.name == name)
                || volumes.insert(vol, entry).is_some()
            {
                return Err(bad(
                    i + 1,
                    format!("volume {vol} or name `{name}` appears twice"),
                ));
            }
        }
        Ok(Catalog { volumes })
    }

    /// Formats the catalog text.
    pub fn format(&self) -> String {
        let mut s = format!("{CATALOG_HEADER}\n");
        for e in self.volumes.values() {
            let _ = writeln!(s, "{} {} {} {}", e.vol, e.name, e.service, e.location);
        }
        s
    }

    /// Looks a volume up by name, or by id written as 4 hex digits or a number.
    pub fn find(&self, what: &str) -> Option<&CatalogEntry> {
        if let Some(e) = self.volumes.values().find(|e| e.name == what) {
            return Some(e);
        }
        let id = parse_vol(what).or_else(|| what.parse::<u16>().ok().map(VolId))?;
        self.volumes.get(&id)
    }

    /// The lowest free id of this cell (1..=0x7fff).
    pub fn free_id(&self) -> Option<VolId> {
        (1..VolId::FOREIGN_BIT)
            .map(VolId)
            .find(|v| !self.volumes.contains_key(v))
    }
}

/// Parses the mount table.
pub fn parse_mounts(text: &str) -> Result<Vec<VolId>, CatalogError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let vol = parse_vol(line).ok_or_else(|| bad(i + 1, format!("bad volume id `{line}`")))?;
        if !out.contains(&vol) {
            out.push(vol);
        }
    }
    Ok(out)
}

/// Formats the mount table.
pub fn format_mounts(vols: &[VolId]) -> String {
    let mut s = format!("{MOUNTS_HEADER}\n");
    for v in vols {
        let _ = writeln!(s, "{v}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: u16, name: &str) -> CatalogEntry {
        CatalogEntry {
            vol: VolId(v),
            name: name.into(),
            service: "ssr".into(),
            location: format!("vol-{v:04x}"),
        }
    }

    #[test]
    fn catalog_round_trips_and_finds_by_name_or_id() {
        let mut c = Catalog::default();
        c.volumes.insert(VolId(1), entry(1, "data"));
        c.volumes.insert(VolId(0x2a), entry(0x2a, "code"));
        let parsed = Catalog::parse(&c.format()).unwrap();
        assert_eq!(parsed, c);
        assert_eq!(parsed.find("code").unwrap().vol, VolId(0x2a));
        assert_eq!(parsed.find("002a").unwrap().name, "code");
        assert_eq!(parsed.find("42").unwrap().name, "code");
        assert!(parsed.find("nope").is_none());
        assert_eq!(parsed.free_id(), Some(VolId(2)));
    }

    #[test]
    fn bad_catalog_lines_are_named() {
        assert_eq!(Catalog::parse("0001 a ssr").unwrap_err().line, 1);
        assert!(Catalog::parse("\n\nzz01 a ssr vol-1")
            .unwrap_err()
            .reason
            .contains("bad volume id"));
        assert!(Catalog::parse("0001 a ssr ../etc")
            .unwrap_err()
            .reason
            .contains("bad location"));
        assert!(Catalog::parse("0001 a ssr l\n0002 a ssr m")
            .unwrap_err()
            .reason
            .contains("twice"));
        assert!(Catalog::parse("0001 9x ssr l").is_err());
    }

    #[test]
    fn names_are_strict() {
        for ok in ["data", "v1", "a.b-c_d", &"x".repeat(32)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "../x",
            "a/b",
            "-a",
            ".a",
            &"x".repeat(33),
            "a b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn mounts_round_trip() {
        let v = vec![VolId(1), VolId(0x7fff)];
        assert_eq!(parse_mounts(&format_mounts(&v)).unwrap(), v);
        assert_eq!(parse_mounts("0001\n0001\n").unwrap(), vec![VolId(1)]);
        assert_eq!(parse_mounts("# c\nxyz").unwrap_err().line, 2);
    }
}
