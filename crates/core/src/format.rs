//! Versions of what Tandem keeps on disk or in rows: the proxy's
//! `snapshot.json`, the control plane's `change_log` rows, the raft log and
//! its snapshot.
//!
//! Each stored format carries a version number. A build reads every version
//! up to its own and refuses a newer one with [`NewerFormat`] instead of
//! misreading it. Files written before versions existed have no field and
//! count as version 1. The rule for changing a format (bump its version,
//! add a golden file) is in ARCHITECTURE.md.

use serde::{Deserialize, Serialize};

/// A stored value written by a newer Tandem than this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} was written by a newer Tandem: format version {found}, this build reads up to {supported}"
)]
pub struct NewerFormat {
    /// What was being read, e.g. `state file /var/lib/tandem/snapshot.json`.
    pub what: String,
    pub found: u32,
    pub supported: u32,
}

/// Accepts `found` (None: written before versions existed, i.e. 1) when
/// this build reads it.
pub fn check(
    what: impl FnOnce() -> String,
    found: Option<u32>,
    supported: u32,
) -> Result<u32, NewerFormat> {
    let found = found.unwrap_or(1);
    if found > supported {
        return Err(NewerFormat {
            what: what(),
            found,
            supported,
        });
    }
    Ok(found)
}

/// The version field of a JSON document, read before the document itself
/// (every other field is skipped).
#[derive(Debug, Deserialize)]
pub struct VersionField {
    pub format_version: Option<u32>,
}

/// `value` serialised with a leading `format_version` field. Readers that
/// predate versions ignore the field.
#[derive(Debug, Serialize)]
pub struct Versioned<'a, T> {
    pub format_version: u32,
    #[serde(flatten)]
    pub value: &'a T,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_version_is_one_and_a_newer_one_is_refused() {
        let what = || "state file x".to_string();
        assert_eq!(check(what, None, 1), Ok(1));
        assert_eq!(check(what, Some(2), 3), Ok(2));
        let e = check(what, Some(4), 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "state file x was written by a newer Tandem: format version 4, this build reads up to 3"
        );
    }

    #[test]
    fn the_field_leads_and_the_rest_is_the_value() {
        #[derive(Serialize)]
        struct S {
            a: u8,
        }
        let json = serde_json::to_string(&Versioned {
            format_version: 2,
            value: &S { a: 1 },
        })
        .unwrap();
        assert_eq!(json, r#"{"format_version":2,"a":1}"#);
        let v: VersionField = serde_json::from_str(&json).unwrap();
        assert_eq!(v.format_version, Some(2));
        let v: VersionField = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert_eq!(v.format_version, None);
    }
}
