//! The last-known-good configuration on disk (`snapshot.json`), so a proxy
//! restarted while no control plane answers still serves (static
//! stability). Writes are atomic: temp file, fsync, rename, fsync of the
//! directory; a crash leaves the old copy or the new one, never half of one.
//! The file holds the TLS certificates' private keys: it is created 0600.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use tandem_core::Snapshot;
use tandem_core::format::{self, VersionField, Versioned};

use crate::Error;

pub const FILE_NAME: &str = "snapshot.json";

/// The file's format version this build writes (and the newest it reads).
/// Files written before versions existed have no `format_version` field
/// and are version 1. Version 2 adds routes' `redirect_https` and
/// `hsts_max_age_s` and the snapshot's `certificates`; version 3 the
/// snapshot's `store` identity (id and generation: a proxy resuming with
/// another identity than the control plane's takes a full snapshot; files
/// without it resume with none, and get one); version 4 pools'
/// `backend_tls` (an older build would speak plain HTTP to TLS backends).
/// Changing the format: see ARCHITECTURE.md.
pub const FORMAT: u32 = 4;

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `snapshot` to `dir/snapshot.json` atomically.
pub fn save(dir: &Path, snapshot: &Snapshot) -> Result<(), Error> {
    let target = path(dir);
    let io = |source| Error::StateIo {
        path: target.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_vec_pretty(&Versioned {
        format_version: FORMAT,
        value: snapshot,
    })
    .map_err(|source| Error::StateFormat {
        path: target.clone(),
        source,
    })?;
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
        };
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        // The rename itself must reach the disk.
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(e)
    })
}

/// Reads `dir/snapshot.json`; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Snapshot>, Error> {
    let target = path(dir);
    let bytes = match fs::read(&target) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::StateIo {
                path: target,
                source,
            });
        }
    };
    let format_error = |source| Error::StateFormat {
        path: target.clone(),
        source,
    };
    let VersionField { format_version } = serde_json::from_slice(&bytes).map_err(format_error)?;
    format::check(
        || format!("state file {}", target.display()),
        format_version,
        FORMAT,
    )?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(format_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::{PoolConfig, PoolName, Revision};

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut s = Snapshot {
            revision: Revision(7),
            ..Default::default()
        };
        let name = PoolName::new("shop").unwrap();
        s.apply(
            Revision(8),
            &tandem_core::ConfigChange::PoolUpserted(PoolConfig::new(name)),
        )
        .unwrap();
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s.clone()));
        s.revision = Revision(9);
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().revision, Revision(9));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "private keys inside: owner only");
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        fs::write(path(dir.path()), b"{not json").unwrap();
        assert!(matches!(load(dir.path()), Err(Error::StateFormat { .. })));
    }

    // === golden files: tests/golden/snapshot-v*.json ===

    fn golden(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name)
    }

    #[test]
    fn every_golden_version_still_loads() {
        let expected = tandem_testkit::golden::snapshot();
        let mut names = vec!["snapshot-v1-unversioned.json".to_string()];
        names.extend((1..=FORMAT).map(|v| format!("snapshot-v{v}.json")));
        for name in names {
            let dir = tempfile::tempdir().unwrap();
            fs::copy(golden(&name), path(dir.path())).unwrap();
            // Versions before 3 hold no store identity.
            let mut expected = expected.clone();
            if name.contains("-v1") || name.contains("-v2") {
                expected.store = None;
            }
            assert_eq!(
                load(dir.path()).unwrap().as_ref(),
                Some(&expected),
                "{name}"
            );
        }
    }

    /// Fails when the file's format changes: bump FORMAT, keep reading the
    /// old version, and bless a new golden file with
    /// `TANDEM_BLESS_GOLDEN=1 cargo test -p tandem-proxy --lib store`.
    #[test]
    fn todays_writer_produces_the_current_golden_file() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &tandem_testkit::golden::snapshot()).unwrap();
        let written = fs::read(path(dir.path())).unwrap();
        let golden = golden(&format!("snapshot-v{FORMAT}.json"));
        if std::env::var_os("TANDEM_BLESS_GOLDEN").is_some() {
            fs::write(&golden, &written).unwrap();
        }
        assert!(
            written == fs::read(&golden).unwrap(),
            "snapshot.json is no longer written as {}: a format change needs a new FORMAT and golden file",
            golden.display()
        );
    }

    #[test]
    fn a_file_from_a_newer_tandem_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let newer = format!(
            r#"{{"format_version": {}, "revision": 1, "pools": {{}}, "routes": []}}"#,
            FORMAT + 1
        );
        fs::write(path(dir.path()), newer).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "state file {} was written by a newer Tandem: format version {}, this build reads up to {FORMAT}",
                path(dir.path()).display(),
                FORMAT + 1
            )
        );
    }
}
