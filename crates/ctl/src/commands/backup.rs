//! `tandemctl snapshot save FILE` and `snapshot restore FILE`: the whole
//! declared configuration to a file with its revision and store identity,
//! and back as one change after the operator saw the difference.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tandem_core::format::{self, VersionField};
use tandem_core::{Snapshot, StoreIdentity};
use tandem_proto::convert;
use tandem_proto::v1;

use super::Session;
use crate::error::CtlError;

/// The format of a saved snapshot file this build writes (and the newest
/// it reads).
pub const FORMAT: u32 = 1;

/// What `snapshot save` writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedSnapshot {
    pub format_version: u32,
    /// Always "tandem-configuration".
    pub kind: String,
    /// When it was saved (RFC 3339).
    pub saved_at: String,
    /// The revision and store identity it was saved at (also in
    /// `configuration`).
    pub revision: u64,
    pub store: Option<StoreIdentity>,
    /// The declared configuration. Certificates hold their chain and name,
    /// never their private key: a restore keeps the live certificate of
    /// the same name and chain.
    pub configuration: Snapshot,
}

const KIND: &str = "tandem-configuration";

impl Session {
    pub(super) async fn snapshot_save(
        &self,
        file: &Path,
        out: &mut dyn Write,
    ) -> Result<(), CtlError> {
        let live = self.live_snapshot().await?;
        let saved = SavedSnapshot {
            format_version: FORMAT,
            kind: KIND.into(),
            saved_at: chrono::Utc::now().to_rfc3339(),
            revision: live.revision.0,
            store: live.store.clone(),
            configuration: live,
        };
        let json = serde_json::to_vec_pretty(&saved)
            .map_err(|e| CtlError::Usage(format!("the snapshot does not serialise: {e}")))?;
        std::fs::write(file, json)
            .map_err(|e| CtlError::Usage(format!("cannot write {}: {e}", file.display())))?;
        writeln!(
            out,
            "saved revision {} of store {} ({} pools, {} routes, {} TCP routes, {} certificates) to {}",
            saved.revision,
            describe_store(saved.store.as_ref()),
            saved.configuration.pools.len(),
            saved.configuration.routes.len(),
            saved.configuration.tcp_routes.len(),
            saved.configuration.certificates.len(),
            file.display()
        )?;
        Ok(())
    }

    pub(super) async fn snapshot_restore(
        &self,
        file: &Path,
        yes: bool,
        out: &mut dyn Write,
    ) -> Result<(), CtlError> {
        let saved = read_saved(file)?;
        let live = self.live_snapshot().await?;
        let changes = diff(&live, &saved.configuration);
        writeln!(
            out,
            "restoring {} (revision {} of store {}, saved {}) over the live revision {} of store {}:",
            file.display(),
            saved.revision,
            describe_store(saved.store.as_ref()),
            saved.saved_at,
            live.revision.0,
            describe_store(live.store.as_ref()),
        )?;
        if changes.is_empty() {
            writeln!(out, "  (no difference in the declared configuration)")?;
        }
        for line in &changes {
            writeln!(out, "  {line}")?;
        }
        out.flush()?;
        if !yes && !confirm()? {
            writeln!(out, "not restored")?;
            return Err(CtlError::Usage("restore not confirmed".into()));
        }
        let mut message = convert::snapshot_to_proto(&saved.configuration);
        message.stale = None;
        let reply = self
            .unary(
                self.client
                    .clone()
                    .restore_snapshot(v1::RestoreSnapshotRequest {
                        snapshot: Some(message),
                        expected_revision: Some(live.revision.0),
                    }),
            )
            .await?;
        writeln!(
            out,
            "restored as revision {} (store {} generation {}): every proxy and agent takes a full snapshot",
            reply.revision, reply.store_id, reply.generation
        )?;
        Ok(())
    }

    async fn live_snapshot(&self) -> Result<Snapshot, CtlError> {
        let reply = self
            .unary(self.client.clone().get_snapshot(v1::GetSnapshotRequest {}))
            .await?;
        self.warn_if_stale(reply.stale.as_ref(), reply.revision);
        convert::snapshot_from_proto(&reply).map_err(|e| {
            CtlError::Usage(format!(
                "the control plane's snapshot does not convert: {e}"
            ))
        })
    }
}

fn describe_store(s: Option<&StoreIdentity>) -> String {
    s.map_or_else(
        || "unknown".into(),
        |s| format!("{} generation {}", s.id, s.generation),
    )
}

/// Asks on the terminal; without one, refuses (use --yes).
fn confirm() -> Result<bool, CtlError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CtlError::Usage(
            "restore needs a confirmation: run it on a terminal, or pass --yes".into(),
        ));
    }
    eprint!("Replace the live configuration with this one? [y/N] ");
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}

/// Reads and checks a file `snapshot save` wrote.
pub fn read_saved(file: &Path) -> Result<SavedSnapshot, CtlError> {
    let bad = |why: String| CtlError::Usage(format!("{}: {why}", file.display()));
    let bytes = std::fs::read(file).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let VersionField { format_version } = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a snapshot file (JSON): {e}")))?;
    if format_version.is_none() {
        return Err(bad("not a snapshot file: no format_version".into()));
    }
    format::check(
        || format!("snapshot file {}", file.display()),
        format_version,
        FORMAT,
    )
    .map_err(|e| CtlError::Usage(e.to_string()))?;
    let saved: SavedSnapshot =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a snapshot file: {e}")))?;
    if saved.kind != KIND {
        return Err(bad(format!("kind is {:?}, not {KIND:?}", saved.kind)));
    }
    Ok(saved)
}

/// What restoring `to` over `from` changes, a line each: `+` added, `-`
/// removed, `~` changed.
pub fn diff(from: &Snapshot, to: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, pool) in &from.pools {
        if !to.pools.contains_key(name) {
            lines.push(format!(
                "- pool {name} (and its {} backends)",
                pool.backends.len()
            ));
        }
    }
    for (name, pool) in &to.pools {
        let Some(old) = from.pools.get(name) else {
            lines.push(format!("+ pool {name} ({} backends)", pool.backends.len()));
            for b in &pool.backends {
                lines.push(format!("+ backend {name} {}", describe_backend(b)));
            }
            continue;
        };
        if old.config != pool.config {
            let was = serde_json::to_value(&old.config).unwrap_or_default();
            let now = serde_json::to_value(&pool.config).unwrap_or_default();
            let mut fields = Vec::new();
            if let (Some(was), Some(now)) = (was.as_object(), now.as_object()) {
                for (k, v) in now {
                    if was.get(k) != Some(v) {
                        fields.push(format!(
                            "{k} {} → {v}",
                            was.get(k).cloned().unwrap_or_default()
                        ));
                    }
                }
            }
            lines.push(format!("~ pool {name}: {}", fields.join(", ")));
        }
        for b in &old.backends {
            if pool.backend(&b.address).is_none() {
                lines.push(format!("- backend {name} {}", b.address));
            }
        }
        for b in &pool.backends {
            match old.backend(&b.address) {
                None => lines.push(format!("+ backend {name} {}", describe_backend(b))),
                Some(o) if o != b => lines.push(format!(
                    "~ backend {name} {} → {}",
                    describe_backend(o),
                    describe_backend(b)
                )),
                Some(_) => {}
            }
        }
    }
    let route = |r: &tandem_core::Route| {
        format!(
            "{}{} → {}{}",
            r.host,
            r.path_prefix,
            r.pool,
            if r.redirect_https {
                " (redirect to https)"
            } else {
                ""
            }
        )
    };
    for r in &from.routes {
        if !to.routes.contains(r) {
            lines.push(format!("- route {}", route(r)));
        }
    }
    for r in &to.routes {
        if !from.routes.contains(r) {
            lines.push(format!("+ route {}", route(r)));
        }
    }
    for r in &from.tcp_routes {
        if !to.tcp_routes.contains(r) {
            lines.push(format!("- tcp route {} → {}", r.listen, r.pool));
        }
    }
    for r in &to.tcp_routes {
        if !from.tcp_routes.contains(r) {
            lines.push(format!("+ tcp route {} → {}", r.listen, r.pool));
        }
    }
    for (name, c) in &from.certificates {
        match to.certificates.get(name) {
            None => lines.push(format!("- certificate {name}")),
            Some(n) if n.chain_pem != c.chain_pem => {
                lines.push(format!("~ certificate {name}: another chain"))
            }
            Some(_) => {}
        }
    }
    for name in to.certificates.keys() {
        if !from.certificates.contains_key(name) {
            lines.push(format!("+ certificate {name}"));
        }
    }
    lines
}

fn describe_backend(b: &tandem_core::Backend) -> String {
    format!(
        "{} weight={} role={} state={} order={}",
        b.address,
        b.weight.get(),
        b.role.as_str(),
        b.admin_state.as_str(),
        b.order
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::ConfigChange;

    #[test]
    fn the_diff_names_what_a_restore_adds_removes_and_changes() {
        let live = tandem_testkit::golden::snapshot();
        let mut saved = live.clone();
        assert!(diff(&live, &saved).is_empty());
        let shop = tandem_core::PoolName::new("shop").unwrap();
        let mut pool = saved.pools[&shop].clone();
        let mut b = pool.backends[0].clone();
        b.weight = tandem_core::Weight::new(9).unwrap();
        pool.backends[0] = b.clone();
        pool.config.retry.attempts = 1;
        saved.pools.insert(shop.clone(), pool);
        let next = saved.revision.next();
        saved
            .apply(
                next,
                &ConfigChange::PoolUpserted(tandem_core::PoolConfig::new(
                    tandem_core::PoolName::new("fresh").unwrap(),
                )),
            )
            .unwrap();
        let lines = diff(&live, &saved);
        assert!(
            lines.iter().any(|l| l.starts_with("+ pool fresh")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("~ pool shop") && l.contains("retry")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("~ backend shop {}", b.address))
                    && l.contains("weight=9")),
            "{lines:?}"
        );
        let back = diff(&saved, &live);
        assert!(
            back.iter().any(|l| l.starts_with("- pool fresh")),
            "{back:?}"
        );
    }

    #[test]
    fn a_saved_file_reads_back_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.json");
        let saved = SavedSnapshot {
            format_version: FORMAT,
            kind: KIND.into(),
            saved_at: "2026-12-07T10:00:00Z".into(),
            revision: 15,
            store: tandem_testkit::golden::snapshot().store,
            configuration: tandem_testkit::golden::snapshot(),
        };
        std::fs::write(&file, serde_json::to_vec(&saved).unwrap()).unwrap();
        let back = read_saved(&file).unwrap();
        assert_eq!(back.configuration, saved.configuration);
        std::fs::write(
            &file,
            br#"{"format_version": 9, "kind": "tandem-configuration"}"#,
        )
        .unwrap();
        let e = read_saved(&file).unwrap_err().to_string();
        assert!(e.contains("newer Tandem") && e.contains("s.json"), "{e}");
        std::fs::write(&file, b"{}").unwrap();
        let e = read_saved(&file).unwrap_err().to_string();
        assert!(e.contains("no format_version"), "{e}");
    }
}
