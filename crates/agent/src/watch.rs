//! Following the control plane: a `Watch` stream (kind AGENT), a full
//! snapshot when we are behind, then each change at exactly the next
//! revision. Every applied revision is published to the prober and
//! reported with `ReportApplied` (by a separate task, so a slow control
//! plane never holds up the stream). On any error the agent keeps probing
//! what it has and reconnects with jittered exponential back-off, rotating
//! over the endpoints. Health events are not the agent's business and are
//! skipped.

use std::sync::Arc;

use tandem_client::{
    BoxError, Identity, Progress, Reconnect, apply_event, open_watch, report_applied,
};
use tandem_core::{Revision, Snapshot};
use tandem_proto::v1::NodeKind;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Follows the control plane forever, publishing each applied snapshot.
pub async fn run(endpoints: Vec<String>, me: Identity, out: watch::Sender<Option<Arc<Snapshot>>>) {
    let (report_tx, report_rx) = watch::channel::<Option<(Channel, Revision)>>(None);
    tokio::spawn(report_applied(
        report_rx,
        me.clone(),
        NodeKind::Agent,
        "probing",
    ));
    let reconnects = metrics::counter!("tandem_agent_watch_reconnects_total");
    let revision = metrics::gauge!("tandem_agent_config_revision");

    let mut current: Option<Snapshot> = None;
    let mut attempts = Reconnect::new(endpoints);
    loop {
        let (url, from) = attempts.attempt(current.as_ref());
        let publish = |s: &Snapshot, channel: &Channel| {
            revision.set(s.revision.0 as f64);
            out.send_replace(Some(Arc::new(s.clone())));
            report_tx.send_replace(Some((channel.clone(), s.revision)));
        };
        let learner = attempts.learner();
        let outcome = follow(&url, &me, from, &mut current, publish, learner).await;
        attempts
            .ended(&url, outcome, "probing the last known targets")
            .await;
        reconnects.increment(1);
    }
}

async fn follow(
    url: &str,
    me: &Identity,
    from: Revision,
    current: &mut Option<Snapshot>,
    publish: impl Fn(&Snapshot, &Channel),
    learner: tandem_client::Learner,
) -> Result<Progress, BoxError> {
    let (channel, mut stream) =
        open_watch(url, me, NodeKind::Agent, from, current.as_ref(), learner).await?;
    tracing::info!(endpoint = %url, from_revision = from.0, "watching the control plane");

    let mut progress = Progress::Nothing;
    if current.is_none() {
        // A control plane with nothing declared yet (revision 0) sends no
        // snapshot to a caller at 0: we are up to date with an empty
        // configuration. Otherwise its snapshot follows and replaces this.
        let empty = Snapshot::default();
        publish(&empty, &channel);
        *current = Some(empty);
    }
    while let Some(event) = stream.message().await? {
        match apply_event(current, &event) {
            Ok(false) => {}
            Ok(true) => {
                if let Some(s) = current.as_ref() {
                    tracing::debug!(revision = s.revision.0, "configuration applied");
                    publish(s, &channel);
                }
                progress = Progress::Applied;
            }
            Err(why) => {
                tracing::warn!(revision = event.revision, reason = %why, "change does not apply; asking for a fresh snapshot");
                return Ok(Progress::Diverged);
            }
        }
    }
    tracing::info!(endpoint = %url, "watch stream ended");
    Ok(progress)
}
