//! Health history in Postgres: the raft leader writes committed transitions
//! as they come, and catches up from the state machine's recent list after
//! a database outage. Observed state keeps flowing through raft regardless.

use std::time::Duration;

use tokio::sync::watch;

use crate::consensus::Consensus;
use crate::leader::{Ticks, on_duty};
use crate::store::Store;

const EVERY: Duration = Duration::from_millis(500);

/// Runs until shutdown.
pub async fn record(store: Store, consensus: Consensus, shutdown: watch::Receiver<bool>) {
    // The highest raft index known to be in the table (None: ask).
    let mut recorded: Option<u64> = None;
    let mut ticks = Ticks::new(EVERY, shutdown);
    while ticks.next().await {
        // Not while the database is known to be away: the hub says when it
        // is back, and the table's recent list covers the gap.
        if on_duty(&consensus, &store).is_none() {
            recorded = None;
            continue;
        }
        let table = consensus.table();
        if table
            .recent
            .back()
            .is_none_or(|(i, _)| Some(*i) <= recorded)
        {
            continue;
        }
        let result = async {
            let from = match recorded {
                Some(r) => r,
                None => store.last_recorded_health_index().await?,
            };
            let pending: Vec<_> = table.recent.iter().filter(|(i, _)| *i > from).collect();
            let last = pending.last().map(|(i, _)| *i).unwrap_or(from);
            store.record_health(&pending).await?;
            if !pending.is_empty() {
                tracing::debug!(n = pending.len(), up_to = last, "health history recorded");
            }
            Ok::<u64, crate::Error>(last)
        }
        .await;
        match result {
            Ok(last) => recorded = Some(last),
            Err(e) => {
                recorded = None;
                tracing::warn!(error = %e, "cannot record health history yet; will catch up");
            }
        }
    }
}
