//! Reconciling the emergency levers: a drain, disable or enable taken while
//! the control database was down lives as a raft override
//! (`Command::Override`). Once the database answers again, the raft leader
//! applies each override to the declared configuration as a normal change
//! (a new revision, as if the operator had run the command then), and
//! clears the override through raft. An override whose backend no longer
//! exists in the declared configuration is cleared with a warning.

use std::time::Duration;

use tokio::sync::watch;

use crate::Error;
use crate::consensus::{Command, Consensus};
use crate::leader::{Ticks, on_duty};
use crate::store::Store;

const EVERY: Duration = Duration::from_millis(500);

/// Runs until shutdown.
pub async fn reconcile(store: Store, consensus: Consensus, shutdown: watch::Receiver<bool>) {
    let mut ticks = Ticks::new(EVERY, shutdown);
    while ticks.next().await {
        if on_duty(&consensus, &store).is_none() {
            continue;
        }
        let table = consensus.table();
        for (key, state) in &table.overrides {
            let written = store
                .update_backend(&key.pool, &key.address, None, |mut b| {
                    b.admin_state = *state;
                    b
                })
                .await;
            match written {
                Ok((_, rev)) => tracing::info!(
                    pool = %key.pool, backend = %key.address, state = state.as_str(), revision = rev.0,
                    "raft override applied to the declared configuration"
                ),
                Err(e @ (Error::Unavailable(_) | Error::DatabaseDown(_))) => {
                    tracing::warn!(error = %e, "cannot reconcile overrides yet; will retry");
                    break;
                }
                Err(e) => tracing::warn!(
                    pool = %key.pool, backend = %key.address, error = %e,
                    "raft override cannot be applied to the declared configuration; clearing it"
                ),
            }
            let clear = Command::Override {
                key: key.clone(),
                state: None,
            };
            if let Err(e) = consensus.propose(&clear).await {
                tracing::warn!(error = %e, "cannot clear a reconciled override yet; will retry");
                break;
            }
        }
    }
}
