//! The store's identity (`store_identity`): an id made with the database
//! and a generation that changes whenever history may have been rewritten,
//! and the restore of a whole configuration as one change.

use sqlx::Row;
use tandem_core::{Error as Domain, Revision, Snapshot, StoreIdentity, ValidationError};

use super::{
    NOTIFY_CHANNEL, Result, Store, commit_notifying, insert_route, insert_tcp_route, write_backend,
};
use crate::error::Error;

/// The identity and the revision, as one query reads them.
pub(crate) const IDENTITY_QUERY: &str =
    "SELECT i.id::text AS id, i.generation, r.revision FROM store_identity i, config_revision r";

pub(crate) fn identity_from_row(row: &sqlx::postgres::PgRow) -> Result<(StoreIdentity, Revision)> {
    let generation: i64 = row.try_get("generation")?;
    let revision: i64 = row.try_get("revision")?;
    Ok((
        StoreIdentity {
            id: row.try_get("id")?,
            generation: generation as u64,
        },
        Revision(revision as u64),
    ))
}

impl Store {
    /// The store's identity and its current revision.
    pub async fn identity(&self) -> Result<(StoreIdentity, Revision)> {
        let row = sqlx::query(IDENTITY_QUERY).fetch_one(self.pg()).await?;
        identity_from_row(&row)
    }

    /// Starts a new generation because history may have been rewritten
    /// (`reason`), unless the store already left `seen` (another replica
    /// noticed first). Returns the identity now current. Every replica's
    /// hub is told (a notification), and reloads.
    pub async fn new_generation(
        &self,
        seen: &StoreIdentity,
        reason: &str,
    ) -> Result<(StoreIdentity, Revision)> {
        let mut tx = self.pg().begin().await?;
        let current: i64 = sqlx::query_scalar("SELECT revision FROM config_revision FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let bumped = sqlx::query(
            "UPDATE store_identity SET generation = generation + 1, since_revision = $3,
                 reason = $4, changed_at = now()
             WHERE id::text = $1 AND generation = $2",
        )
        .bind(&seen.id)
        .bind(seen.generation as i64)
        .bind(current)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row = sqlx::query(IDENTITY_QUERY).fetch_one(&mut *tx).await?;
        let now = identity_from_row(&row)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(current.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if bumped > 0 {
            metrics::counter!("tandem_control_store_generations_total").increment(1);
            tracing::warn!(store = %now.0.id, from = seen.generation, to = now.0.generation, revision = current, %reason, "new store generation: every follower takes a full snapshot");
        }
        Ok(now)
    }

    /// Replaces the whole declared configuration with `snapshot` as one
    /// change: one new revision (no change_log row: the new generation
    /// starts from a snapshot), a new generation. A certificate without a
    /// private key is kept as it is live when its chain is the same.
    pub async fn restore(
        &self,
        snapshot: &Snapshot,
        expected: Option<Revision>,
    ) -> Result<(Revision, StoreIdentity)> {
        check_restorable(snapshot)?;
        let mut sealed = Vec::new();
        for cert in snapshot.certificates.values() {
            if !cert.key_pem.expose().is_empty() {
                sealed.push((cert, self.seal(cert)?));
            }
        }
        let (mut tx, rev) = self.begin_change().await?;
        if let Some(e) = expected
            && e.next() != rev
        {
            return Err(Domain::StaleRevision {
                what: "the configuration".into(),
                expected: e.0,
                actual: rev.0 - 1,
            }
            .into());
        }
        // Certificates given without a key: kept from the live ones.
        let mut kept = Vec::new();
        for cert in snapshot.certificates.values() {
            if !cert.key_pem.expose().is_empty() {
                continue;
            }
            let live: Option<String> =
                sqlx::query_scalar("SELECT chain_pem FROM certificates WHERE name = $1")
                    .bind(cert.name.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if live.as_deref() != Some(cert.chain_pem.as_str()) {
                return Err(ValidationError::new(
                    format!("snapshot.certificates[{}].key_pem", cert.name),
                    "is empty and no live certificate of that name has the same chain to keep the key from: add the certificate (tandemctl cert add) after the restore, or restore a snapshot that holds its key",
                )
                .into());
            }
            kept.push(cert.name.to_string());
        }
        for delete in [
            "DELETE FROM routes",
            "DELETE FROM tcp_routes",
            "DELETE FROM backends",
            "DELETE FROM pools",
        ] {
            sqlx::query(delete).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM certificates WHERE NOT (name = ANY($1))")
            .bind(&kept)
            .execute(&mut *tx)
            .await?;
        for pool in snapshot.pools.values() {
            sqlx::query("INSERT INTO pools (name, settings, revision) VALUES ($1, $2, $3)")
                .bind(pool.config.name.as_str())
                .bind(sqlx::types::Json(&pool.config))
                .bind(rev.0 as i64)
                .execute(&mut *tx)
                .await?;
            for b in &pool.backends {
                write_backend(&mut tx, &pool.config.name, b, rev).await?;
            }
        }
        for route in &snapshot.routes {
            insert_route(&mut tx, route, rev).await?;
        }
        for route in &snapshot.tcp_routes {
            insert_tcp_route(&mut tx, route, rev).await?;
        }
        for (cert, key) in &sealed {
            sqlx::query(
                "INSERT INTO certificates (name, chain_pem, key_sealed, revision) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET chain_pem = $2, key_sealed = $3, revision = $4",
            )
            .bind(cert.name.as_str())
            .bind(&cert.chain_pem)
            .bind(key)
            .bind(rev.0 as i64)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE store_identity SET generation = generation + 1, since_revision = $1,
                 reason = 'restore', changed_at = now()",
        )
        .bind(rev.0 as i64)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(IDENTITY_QUERY).fetch_one(&mut *tx).await?;
        let (identity, _) = identity_from_row(&row)?;
        commit_notifying(tx, rev).await?;
        metrics::counter!("tandem_control_store_generations_total").increment(1);
        tracing::warn!(revision = rev.0, store = %identity.id, generation = identity.generation, pools = snapshot.pools.len(), "restored the configuration from a snapshot: a new store generation");
        Ok((rev, identity))
    }
}

/// What the database's constraints would refuse less clearly: routes to
/// pools the snapshot does not have, two routes on one host and prefix, two
/// TCP routes that cannot both bind.
fn check_restorable(s: &Snapshot) -> Result<()> {
    let bad = |field: String, rule: String| -> Error { ValidationError::new(field, rule).into() };
    for (i, r) in s.routes.iter().enumerate() {
        if !s.pools.contains_key(&r.pool) {
            return Err(bad(
                format!("snapshot.routes[{i}].pool"),
                format!(
                    "names pool {:?}, which the snapshot does not hold",
                    r.pool.as_str()
                ),
            ));
        }
        if s.routes[..i]
            .iter()
            .any(|o| o.host == r.host && o.path_prefix == r.path_prefix)
        {
            return Err(bad(
                format!("snapshot.routes[{i}]"),
                format!("a second route for {}{}", r.host, r.path_prefix),
            ));
        }
    }
    for (i, r) in s.tcp_routes.iter().enumerate() {
        if !s.pools.contains_key(&r.pool) {
            return Err(bad(
                format!("snapshot.tcp_routes[{i}].pool"),
                format!(
                    "names pool {:?}, which the snapshot does not hold",
                    r.pool.as_str()
                ),
            ));
        }
        if let Some(o) = s.tcp_routes[..i]
            .iter()
            .find(|o| o.listen.conflicts_with(&r.listen))
        {
            return Err(bad(
                format!("snapshot.tcp_routes[{i}].listen"),
                format!("{} cannot be bound beside {}", r.listen, o.listen),
            ));
        }
    }
    Ok(())
}
