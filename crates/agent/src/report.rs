//! Reporting observations: probes push into a bounded queue that never
//! blocks them (the oldest observation makes room, counted); one task sends
//! what gathered over a short window as one `ReportHealth`, failing over to
//! the next control-plane endpoint when one does not answer.
//!
//! How long the window lasts depends on what is in it. Every observation
//! says how long it may wait ([`ReportQueue::push`]): one that can move a
//! verdict (a failure, a change, the first passes after a failure) none
//! beyond the batch window (`--report-batch-ms`, 50 ms), so a failing
//! backend reaches the decider as fast as before; one that only repeats a
//! settled pass up to half its interval (at most 1 s), which is still far
//! inside the three intervals after which the decider stops counting a
//! silent agent. A fleet of healthy backends probed every second is then
//! reported about twice a second instead of ten times: each report
//! costs the agent a wake-up, a round trip and a request's worth of HTTP/2
//! work, which at a thousand probes a second was a fifth of its CPU time.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tandem_client::{Backoff, Jitter};
use tandem_core::health::BackendKey;
use tandem_proto::v1::{self, control_plane_client::ControlPlaneClient};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::Error;
use crate::control::{Identity, lazy_channel};
use crate::metrics::ReportMetrics;
use crate::probe::Class;
use crate::schedule;

/// At most this many observations in one request (a few hundred KB).
const MAX_PER_REPORT: usize = 4_096;
/// Waits after a report no endpoint took: 100 ms doubling to 2 s, between
/// half and all of that.
const BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(2),
    Jitter::Half,
);

/// One probe result, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub key: Arc<BackendKey>,
    pub class: Class,
    pub detail: Cow<'static, str>,
    pub latency_ms: u32,
}

impl Observation {
    pub fn ok(&self) -> bool {
        self.class == Class::Ok
    }
}

/// How long an observation that only repeats a settled pass may wait
/// before it is sent: half its probe interval, at most a second.
pub fn settled_hold(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_secs(1))
}

fn to_proto(o: Observation) -> v1::Observation {
    v1::Observation {
        pool: o.key.pool.to_string(),
        address: o.key.address.to_string(),
        ok: o.ok(),
        detail: o.detail.into_owned(),
        latency_ms: o.latency_ms,
    }
}

// === ReportQueue ===

/// A bounded, lock-free queue of observations. Pushing never waits: when it
/// is full, the oldest observation is dropped, since the newest says more
/// about a backend than an old one.
pub struct ReportQueue {
    queue: ArrayQueue<Observation>,
    /// The shortest wait (nanoseconds) asked for by an observation pushed
    /// since the last drain; `u64::MAX` when none was.
    hold: AtomicU64,
    ready: Notify,
    /// Observations dropped because the queue was full.
    dropped: metrics::Counter,
}

impl ReportQueue {
    pub fn new(capacity: usize) -> ReportQueue {
        ReportQueue {
            queue: ArrayQueue::new(capacity.max(1)),
            hold: AtomicU64::new(u64::MAX),
            ready: Notify::new(),
            dropped: ReportMetrics::new().dropped_queue_full,
        }
    }

    /// Queues `o`, which may wait up to `hold` (beyond the batch window)
    /// before it is sent. Wakes the reporter only when that brings the
    /// report forward: for the first observation of a window, and for one
    /// more urgent than all before it.
    pub fn push(&self, o: Observation, hold: Duration) {
        if self.queue.force_push(o).is_some() {
            self.dropped.increment(1);
        }
        let hold = u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX - 1);
        if hold < self.hold.fetch_min(hold, Ordering::AcqRel) {
            self.ready.notify_one();
        }
    }

    /// The shortest wait asked for since the last drain, if anything was
    /// pushed.
    fn hold(&self) -> Option<Duration> {
        match self.hold.load(Ordering::Acquire) {
            u64::MAX => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Everything queued, oldest first.
    pub fn drain(&self) -> Vec<Observation> {
        // Reset first: what is pushed from now on opens the next window.
        self.hold.store(u64::MAX, Ordering::Release);
        let mut out = Vec::with_capacity(self.queue.len());
        while let Some(o) = self.queue.pop() {
            out.push(o);
        }
        out
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Resolves once a push brought the report forward since the last
    /// call.
    pub(crate) async fn wait(&self) {
        self.ready.notified().await;
    }
}

// === impl Reporter ===

/// Sends batches of observations to the control plane.
pub struct Reporter {
    endpoints: Vec<(String, ControlPlaneClient<Channel>)>,
    me: Identity,
    batch: Duration,
    timeout: Duration,
    /// The endpoint that answered last: tried first.
    current: usize,
    /// Whether the last batch failed everywhere (to log changes only).
    failing: bool,
    metrics: ReportMetrics,
}

impl Reporter {
    pub fn new(
        urls: &[String],
        me: Identity,
        batch: Duration,
        timeout: Duration,
    ) -> Result<Reporter, Error> {
        let endpoints = urls
            .iter()
            .map(|u| {
                Ok((
                    u.clone(),
                    ControlPlaneClient::new(lazy_channel(u, &me, timeout)?),
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Reporter {
            endpoints,
            me,
            batch,
            timeout,
            current: 0,
            failing: false,
            metrics: ReportMetrics::new(),
        })
    }

    /// Sends what the probes queue until `stop` turns true, then sends what
    /// is left once. `grid` is the origin of the probes' start grid.
    pub async fn run(
        mut self,
        queue: Arc<ReportQueue>,
        mut stop: watch::Receiver<bool>,
        grid: Instant,
    ) {
        // The window ends on the probes' start grid, at the coarsest step
        // that fits in it (so at most twice as late): the wake-up that sends
        // a report is then one the probes pay for anyway. An agent wakes up
        // a few dozen times a second, and each wake-up costs more than the
        // work it does.
        let step = schedule::grid_step(self.batch);
        let mut backoff = BACKOFF;
        loop {
            tokio::select! {
                _ = queue.wait() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            // Gather a window's worth: one report instead of one per probe,
            // and still far under any probe interval. An urgent observation
            // arriving meanwhile shortens the window.
            let opened = Instant::now();
            loop {
                let hold = queue.hold().unwrap_or_default().max(self.batch);
                let end = schedule::on_grid(grid.into_std(), (opened + hold).into_std(), step);
                tokio::select! {
                    _ = tokio::time::sleep_until(Instant::from_std(end)) => break,
                    _ = queue.wait() => {}
                }
            }
            let batch = queue.drain();
            if batch.is_empty() {
                continue;
            }
            if self.send(batch).await {
                backoff.reset();
            } else {
                // Nobody answers: wait a little (the queue keeps the newest
                // observations meanwhile) rather than spin over endpoints.
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_wait()) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
        let rest = queue.drain();
        if !rest.is_empty() {
            tracing::debug!(observations = rest.len(), "sending the last observations");
            self.send(rest).await;
        }
    }

    /// Sends a batch; false when no endpoint took it (it is dropped).
    async fn send(&mut self, batch: Vec<Observation>) -> bool {
        let total = batch.len();
        let observations: Vec<v1::Observation> = batch.into_iter().map(to_proto).collect();
        let mut done = 0;
        for chunk in observations.chunks(MAX_PER_REPORT) {
            if !self.send_chunk(chunk).await {
                self.metrics
                    .dropped_report_failed
                    .increment((total - done) as u64);
                return false;
            }
            done += chunk.len();
        }
        true
    }

    /// Tries every endpoint once, starting with the one that answered last.
    async fn send_chunk(&mut self, observations: &[v1::Observation]) -> bool {
        let n = self.endpoints.len();
        for attempt in 0..n {
            let i = (self.current + attempt) % n;
            let mut req = tonic::Request::new(v1::ReportHealthRequest {
                agent_id: self.me.node_id.clone(),
                zone: self.me.zone.clone(),
                observations: observations.to_vec(),
            });
            if let Err(e) = self.me.authorize(&mut req) {
                tracing::error!(error = %e, "cannot report");
                return false;
            }
            let (url, client) = &mut self.endpoints[i];
            // A span per report; the control plane's span of the call
            // continues it (W3C traceparent in the call's metadata).
            let span = tracing::info_span!(
                "report health",
                otel.kind = "client",
                endpoint = %url,
                observations = observations.len(),
                failing = observations.iter().filter(|o| !o.ok).count(),
            );
            if let Some(tp) = tandem_telemetry::spans::traceparent_of(&span)
                && let Ok(v) = tp.parse()
            {
                req.metadata_mut().insert("traceparent", v);
            }
            let result = tokio::time::timeout(self.timeout, client.report_health(req))
                .instrument(span)
                .await;
            let error = match result {
                Ok(Ok(_)) => {
                    self.metrics.sent.increment(1);
                    if self.failing {
                        tracing::info!(endpoint = %url, "observations reach the control plane again");
                        self.failing = false;
                    }
                    self.current = i;
                    return true;
                }
                Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
            };
            self.metrics.failed.increment(1);
            tracing::debug!(endpoint = %url, %error, "ReportHealth failed; trying the next endpoint");
            if !self.failing && attempt + 1 == n {
                tracing::warn!(endpoint = %url, %error, "no control-plane endpoint takes health reports; dropping observations until one does");
            }
        }
        self.failing = true;
        false
    }
}

#[cfg(test)]
mod tests {
    use tandem_core::{BackendAddr, PoolName};

    use super::*;

    fn identity() -> Identity {
        Identity {
            node_id: "a1".into(),
            zone: String::new(),
            token: Some("t".into()),
            tls: None,
        }
    }

    /// A reporter with a 50 ms window, sending to where nothing listens,
    /// running from now on: the grid's origin, and its stop switch.
    fn spawn_reporter(q: &Arc<ReportQueue>) -> (Instant, watch::Sender<bool>) {
        let ms = Duration::from_millis;
        let urls = ["http://127.0.0.1:1".to_string()];
        let r = Reporter::new(&urls, identity(), ms(50), ms(200)).unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let origin = Instant::now();
        tokio::spawn(r.run(q.clone(), stop_rx, origin));
        (origin, stop_tx)
    }

    fn obs(i: u32) -> Observation {
        Observation {
            key: Arc::new(BackendKey {
                pool: PoolName::new("shop").unwrap(),
                address: BackendAddr::new("10.0.0.1:80").unwrap(),
            }),
            class: Class::Ok,
            detail: "HTTP 200".into(),
            latency_ms: i,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let q = ReportQueue::new(3);
        for i in 0..5 {
            q.push(obs(i), Duration::ZERO);
        }
        let kept: Vec<u32> = q.drain().iter().map(|o| o.latency_ms).collect();
        assert_eq!(kept, [2, 3, 4], "the newest are kept, oldest first");
        assert!(q.drain().is_empty());
    }

    #[tokio::test]
    async fn pushing_wakes_the_reporter() {
        let q = Arc::new(ReportQueue::new(8));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.wait().await }
        });
        q.push(obs(1), Duration::ZERO);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_window_ends_on_the_probes_grid() {
        let ms = Duration::from_millis;
        let q = Arc::new(ReportQueue::new(8));
        let (origin, _stop) = spawn_reporter(&q);
        tokio::time::sleep_until(origin + ms(7)).await;
        q.push(obs(1), Duration::ZERO);
        // 50 ms later is off the grid of 50 ms: still gathering...
        tokio::time::sleep_until(origin + ms(90)).await;
        assert_eq!(q.queued(), 1);
        // ...until the probes' wake-up at 100 ms.
        tokio::time::sleep_until(origin + ms(101)).await;
        assert_eq!(q.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn settled_passes_wait_longer_and_an_urgent_observation_brings_the_report_forward() {
        let ms = Duration::from_millis;
        // A settled pass of a 1 s interval may wait 500 ms: sent at the
        // grid point after 7 + 500 ms, not after 7 + 50.
        assert_eq!(settled_hold(ms(1_000)), ms(500));
        assert_eq!(settled_hold(ms(60_000)), ms(1_000));
        let q = Arc::new(ReportQueue::new(8));
        let (origin, _stop) = spawn_reporter(&q);
        tokio::time::sleep_until(origin + ms(7)).await;
        q.push(obs(1), settled_hold(ms(1_000)));
        tokio::time::sleep_until(origin + ms(490)).await;
        assert_eq!(q.queued(), 1);
        tokio::time::sleep_until(origin + ms(551)).await;
        assert_eq!(q.queued(), 0);

        // A failure pushed behind it goes with the next grid point after
        // the batch window, and takes the pass along.
        let q = Arc::new(ReportQueue::new(8));
        let (origin, _stop) = spawn_reporter(&q);
        tokio::time::sleep_until(origin + ms(7)).await;
        q.push(obs(1), ms(1_000));
        tokio::time::sleep_until(origin + ms(60)).await;
        q.push(
            Observation {
                class: Class::Status,
                ..obs(2)
            },
            Duration::ZERO,
        );
        tokio::time::sleep_until(origin + ms(90)).await;
        assert_eq!(q.queued(), 2);
        tokio::time::sleep_until(origin + ms(101)).await;
        assert_eq!(q.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_control_plane_reports_fail_over_every_endpoint_and_stop_cleanly() {
        // Two endpoints where nothing listens.
        let urls = [
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".to_string(),
        ];
        let mut r = Reporter::new(
            &urls,
            identity(),
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(!r.send(vec![obs(1)]).await);
        assert!(r.failing);
        let q = Arc::new(ReportQueue::new(8));
        q.push(obs(2), Duration::ZERO);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(r.run(q.clone(), stop_rx, Instant::now()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops")
            .unwrap();
    }
}
