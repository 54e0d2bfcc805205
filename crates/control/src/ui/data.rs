//! The status page's two reads of Postgres, both read-only and bounded: the
//! latest changes from the change log (with when they committed) to start
//! the feed, and one backend's recorded health history for its page. Kept
//! here rather than in `store` because nothing else needs them; everything
//! else the page shows comes from memory or `Store::nodes`.

use sqlx::Row as _;
use sqlx::postgres::PgPool;
use tandem_core::ConfigChange;
use tandem_core::health::BackendKey;

use super::view::HistoryRow;
use crate::error::Error;

/// A logged change: revision, change, commit time (Unix ms).
pub type LoggedChange = (u64, ConfigChange, u64);

/// The `limit` latest changes, newest first.
pub async fn recent_changes(pg: &PgPool, limit: usize) -> Result<Vec<LoggedChange>, Error> {
    let rows = sqlx::query(
        "SELECT revision, change, format_version,
                (extract(epoch FROM committed_at) * 1000)::bigint AS at_ms
         FROM change_log ORDER BY revision DESC LIMIT $1",
    )
    .bind(limit as i64)
    .fetch_all(pg)
    .await?;
    rows.iter()
        .map(|r| {
            let (revision, change) = crate::store::change_from_row(r)?;
            let at: i64 = r.try_get("at_ms")?;
            Ok((revision.0, change, at.max(0) as u64))
        })
        .collect()
}

/// One backend's recorded transitions, newest first.
pub async fn history(
    pg: &PgPool,
    key: &BackendKey,
    limit: usize,
) -> Result<Vec<HistoryRow>, Error> {
    let rows = sqlx::query(
        "SELECT raft_index, from_state, to_state, reason,
                (extract(epoch FROM decided_at) * 1000)::bigint AS at_ms
         FROM health_history WHERE pool = $1 AND address = $2
         ORDER BY raft_index DESC LIMIT $3",
    )
    .bind(key.pool.as_str())
    .bind(key.address.as_str())
    .bind(limit as i64)
    .fetch_all(pg)
    .await?;
    rows.iter()
        .map(|r| {
            let index: i64 = r.try_get("raft_index")?;
            let at: i64 = r.try_get("at_ms")?;
            Ok(HistoryRow {
                raft_index: index as u64,
                from: r.try_get("from_state")?,
                to: r.try_get("to_state")?,
                reason: r.try_get("reason")?,
                at_ms: at.max(0) as u64,
            })
        })
        .collect()
}
