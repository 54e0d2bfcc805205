//! Benchmark (not a test): Watch fan-out latency (issue 2).
//!
//! One release `tandem-control` on a throwaway Postgres holding `--pools`
//! pools of `--backends-per-pool` backends, seeded through the gRPC API by
//! several clients at once, and `--watchers` Watch streams (node token, one
//! connection and one node id each, as that many proxies would). For every
//! change (an `UpdateBackend`) it measures the time from the write RPC
//! returning — the change is committed — to the *last* watcher receiving
//! that revision.
//!
//! Baseline in the same run: a plain Postgres `LISTEN` client (sqlx's
//! `PgListener`, what the hub itself uses) on the hub's channel, receiving
//! the NOTIFY of the same commit: the floor Tandem builds on.
//!
//! Two phases: changes spaced `--interval-ms` apart, then a burst of
//! `--burst-changes` from `--burst-writers` writers back to back.
//!
//! Run it with `scripts/bench/watch-fanout.sh`.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use common::{Client, Clock, PidFile, Summary, connect, ratio, summarize};
use tandem_proto::v1;
use tandem_testkit::{ADMIN_TOKEN, ControlPlane, ControlPlaneOptions, NODE_TOKEN, Postgres};
use tokio_stream::StreamExt;

/// Watch fan-out: commit → last watcher, against raw LISTEN/NOTIFY.
#[derive(Debug, Parser)]
struct Args {
    /// Pools to declare.
    #[arg(long, default_value_t = 1000)]
    pools: usize,
    /// Backends in each pool.
    #[arg(long, default_value_t = 10)]
    backends_per_pool: usize,
    /// Watch streams (each its own connection and node id).
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Changes in the spaced phase.
    #[arg(long, default_value_t = 300)]
    changes: usize,
    /// Milliseconds between two changes in the spaced phase.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Changes in the burst phase (0 skips it).
    #[arg(long, default_value_t = 300)]
    burst_changes: usize,
    /// Concurrent writers in the burst phase, each back to back.
    #[arg(long, default_value_t = 4)]
    burst_writers: usize,
    /// Concurrent gRPC clients seeding the configuration.
    #[arg(long, default_value_t = 8)]
    seed_clients: usize,
    /// Seconds to wait for every watcher to receive a phase's changes.
    #[arg(long, default_value_t = 60)]
    deliver_timeout_s: u64,
    /// Extra environment for tandem-control, KEY=VALUE (repeatable).
    #[arg(long, value_parser = common::key_value)]
    control_env: Vec<(String, String)>,
    #[command(flatten)]
    shared: common::Shared,
}

fn main() -> anyhow::Result<()> {
    common::main(run)
}

// === arrival times ===

/// What happened to each measured revision, in nanoseconds of [`Clock`]
/// (0: not yet). Indexed by `revision - base`.
struct Timeline {
    base: u64,
    issued: Vec<AtomicU64>,
    returned: Vec<AtomicU64>,
    notified: Vec<AtomicU64>,
    first: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    receivers: Vec<AtomicU32>,
}

impl Timeline {
    fn new(base: u64, len: usize) -> Timeline {
        let zeros = || (0..len).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Timeline {
            base,
            issued: zeros(),
            returned: zeros(),
            notified: zeros(),
            first: (0..len).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last: zeros(),
            receivers: (0..len).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn slot(&self, revision: u64) -> Option<usize> {
        let i = revision.checked_sub(self.base)? as usize;
        (i < self.last.len()).then_some(i)
    }

    fn written(&self, revision: u64, issued: u64, returned: u64) {
        if let Some(i) = self.slot(revision) {
            self.issued[i].store(issued, Ordering::Relaxed);
            self.returned[i].store(returned, Ordering::Relaxed);
        }
    }

    fn notified(&self, revision: u64, at: u64) {
        if let Some(i) = self.slot(revision) {
            self.notified[i].store(at, Ordering::Relaxed);
        }
    }

    fn received(&self, revision: u64, at: u64) {
        if let Some(i) = self.slot(revision) {
            self.first[i].fetch_min(at, Ordering::Relaxed);
            self.last[i].fetch_max(at, Ordering::Relaxed);
            self.receivers[i].fetch_add(1, Ordering::Release);
        }
    }

    /// Revisions in `range` not yet received by all `watchers` (or not yet
    /// NOTIFYed).
    fn pending(&self, range: std::ops::Range<u64>, watchers: u32) -> usize {
        range
            .filter_map(|r| self.slot(r))
            .filter(|&i| {
                self.receivers[i].load(Ordering::Acquire) < watchers
                    || self.notified[i].load(Ordering::Relaxed) == 0
            })
            .count()
    }
}

// === the run ===

async fn run(args: Args) -> anyhow::Result<()> {
    tandem_testkit::init_crypto();
    let pids = PidFile::new(args.shared.pid_file.clone());
    let clock = Clock::new();
    let objects = args.pools * (1 + args.backends_per_pool);
    println!(
        "watch fan-out: {} pools, {} backends, {} watchers; {} spaced changes every {} ms, \
         a burst of {} from {} writers; {} cores",
        args.pools,
        args.pools * args.backends_per_pool,
        args.watchers,
        args.changes,
        args.interval_ms,
        args.burst_changes,
        args.burst_writers,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let pg = Postgres::start()?;
    let cp = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            raft_id: Some("1".into()),
            env: args.control_env.clone(),
            ..Default::default()
        },
    )
    .await?;
    pids.record(cp.process.pid());
    println!(
        "tandem-control {} on {} (Postgres on port {})",
        tandem_testkit::bin_path("tandem-control").display(),
        cp.grpc,
        pg.port()
    );

    // --- seeding ---
    let started = Instant::now();
    let mut seeders = Vec::new();
    for _ in 0..args.seed_clients.max(1) {
        seeders.push(connect(&cp.endpoint(), ADMIN_TOKEN).await?);
    }
    concurrently("pools", args.pools, &seeders, |mut c, p| async move {
        c.create_pool(v1::CreatePoolRequest {
            pool: Some(v1::Pool {
                name: pool_name(p),
                ..Default::default()
            }),
        })
        .await?;
        Ok(())
    })
    .await?;
    let per_pool = args.backends_per_pool;
    concurrently(
        "backends",
        args.pools * per_pool,
        &seeders,
        move |mut c, g| async move {
            c.add_backend(v1::AddBackendRequest {
                pool: pool_name(g / per_pool),
                backend: Some(v1::Backend {
                    address: backend_addr(g),
                    ..Default::default()
                }),
                expected_revision: None,
            })
            .await?;
            Ok(())
        },
    )
    .await?;
    drop(seeders);
    let mut admin = connect(&cp.endpoint(), ADMIN_TOKEN).await?;
    let seeded = admin
        .get_status(v1::GetStatusRequest {})
        .await?
        .into_inner()
        .revision;
    println!(
        "seeded {objects} objects in {:.1} s (revision {seeded})",
        started.elapsed().as_secs_f64()
    );

    // --- watchers ---
    let total = args.changes + args.burst_changes;
    let timeline = Arc::new(Timeline::new(seeded + 1, total));
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for wave in (0..args.watchers).collect::<Vec<_>>().chunks(10) {
        for &i in wave {
            let client = connect(&cp.endpoint(), NODE_TOKEN)
                .await?
                // The first event is the whole configuration: allow more than 4 MiB.
                .max_decoding_message_size(256 << 20);
            tasks.push(tokio::spawn(watcher(
                i,
                client,
                seeded,
                timeline.clone(),
                ready.clone(),
                failed.clone(),
                clock,
            )));
        }
        let want = wave[wave.len() - 1] + 1;
        wait_for("watchers", Duration::from_secs(120), || {
            anyhow::ensure!(
                !failed.load(Ordering::Relaxed),
                "a watch stream failed (see above)"
            );
            Ok(ready.load(Ordering::Relaxed) >= want)
        })
        .await?;
        print!(
            "\r  watchers: {}/{} streaming from revision {seeded}",
            want, args.watchers
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    println!(
        "\n{} watchers received their snapshot in {:.1} s",
        args.watchers,
        started.elapsed().as_secs_f64()
    );

    // --- the raw LISTEN baseline ---
    let mut listener = sqlx::postgres::PgListener::connect(&pg.url()).await?;
    listener
        .listen(tandem_control::store::NOTIFY_CHANNEL)
        .await?;
    tasks.push(tokio::spawn({
        let timeline = timeline.clone();
        async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        let at = clock.now_ns();
                        if let Ok(revision) = n.payload().parse::<u64>() {
                            timeline.notified(revision, at);
                        }
                    }
                    Err(e) => {
                        eprintln!("LISTEN client: {e}");
                        return;
                    }
                }
            }
        }
    }));
    // Let everything settle after the snapshots.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // --- spaced changes ---
    let spaced = (seeded + 1)..(seeded + 1 + args.changes as u64);
    println!(
        "\nspaced: {} changes, one every {} ms",
        args.changes, args.interval_ms
    );
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shape = Shape {
        pools: args.pools,
        per_pool: args.backends_per_pool,
    };
    let mut progress = Instant::now();
    for k in 0..args.changes {
        ticker.tick().await;
        write_one(&mut admin, shape, k, &timeline, clock).await?;
        if progress.elapsed() >= Duration::from_secs(1) || k + 1 == args.changes {
            progress = Instant::now();
            print!("\r  written {}/{}", k + 1, args.changes);
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
    }
    println!();
    delivered(&timeline, spaced.clone(), &args, &failed).await?;
    let spaced_report = report("spaced", &timeline, spaced, args.watchers);

    // --- burst ---
    let burst_report = if args.burst_changes > 0 {
        let burst = (seeded + 1 + args.changes as u64)..(seeded + 1 + total as u64);
        println!(
            "\nburst: {} changes from {} writers back to back",
            args.burst_changes, args.burst_writers
        );
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut writers = Vec::new();
        for _ in 0..args.burst_writers.max(1) {
            let mut c = connect(&cp.endpoint(), ADMIN_TOKEN).await?;
            let next = next.clone();
            let timeline = timeline.clone();
            let (changes, n) = (args.changes, args.burst_changes);
            writers.push(tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= n {
                        return anyhow::Ok(());
                    }
                    write_one(&mut c, shape, changes + k, &timeline, clock).await?;
                }
            }));
        }
        for w in writers {
            w.await??;
        }
        let took = started.elapsed().as_secs_f64();
        println!(
            "  written {} in {:.2} s ({:.0} changes/s)",
            args.burst_changes,
            took,
            args.burst_changes as f64 / took
        );
        delivered(&timeline, burst.clone(), &args, &failed).await?;
        Some(report("burst", &timeline, burst, args.watchers))
    } else {
        None
    };

    // --- summary ---
    println!(
        "\n=== watch fan-out: commit (write RPC returned) → last of {} watchers ===",
        args.watchers
    );
    println!(
        "{} pools, {} backends; goal: p99 under 100 ms\n",
        args.pools,
        args.pools * args.backends_per_pool
    );
    println!(
        "{:<7} {:>7} | {:>8} {:>8} {:>8} | {:>10} {:>10} | {:>9} {:>9} | {:>9} {:>9}",
        "phase",
        "changes",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "notify_p50",
        "notify_p99",
        "added_p50",
        "added_p99",
        "ratio_p50",
        "ratio_p99"
    );
    for r in [Some(&spaced_report), burst_report.as_ref()]
        .into_iter()
        .flatten()
    {
        r.print_row();
    }
    println!(
        "\np50/p99/max: write RPC returned -> last watcher received (the goal's figure).\n\
         notify_*: write RPC returned -> the plain LISTEN client received the NOTIFY (the floor; \
         <= 0 when the NOTIFY beats the gRPC reply).\n\
         added_*: last watcher - NOTIFY, per change: what Tandem adds on top of the floor.\n\
         ratio_*: last watcher / NOTIFY, both from the write being issued (the one anchor where \
         the floor is positive)."
    );
    for r in [Some(&spaced_report), burst_report.as_ref()]
        .into_iter()
        .flatten()
    {
        println!(
            "{}: p99 {:.2} ms -> goal {}",
            r.phase,
            r.last.p99,
            if r.last.p99 < 100.0 { "met" } else { "NOT met" }
        );
    }

    for t in tasks {
        t.abort();
    }
    drop(cp);
    drop(pg);
    Ok(())
}

fn pool_name(p: usize) -> String {
    format!("pool-{p:04}")
}

/// Backend `g` (global index): unique `10.x.y.z:8080` addresses.
fn backend_addr(g: usize) -> String {
    format!(
        "10.{}.{}.{}:8080",
        (g >> 16) & 0xff,
        (g >> 8) & 0xff,
        g & 0xff
    )
}

/// Runs `op(client, i)` for every i in 0..total on `clients` at once,
/// printing progress.
async fn concurrently<F, Fut>(
    what: &str,
    total: usize,
    clients: &[Client],
    op: F,
) -> anyhow::Result<()>
where
    F: Fn(Client, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in clients {
        let (c, op, next, done) = (c.clone(), op.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                op(c.clone(), i).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let print = |n: usize| {
        let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-3);
        print!("\r  {what}: {n}/{total} ({rate:.0}/s)   ");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    };
    let all = async {
        for w in workers {
            w.await??;
        }
        anyhow::Ok(())
    };
    tokio::pin!(all);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = &mut all => {
                r.with_context(|| format!("seeding {what}"))?;
                break;
            }
            _ = every.tick() => print(done.load(Ordering::Relaxed)),
        }
    }
    print(total);
    println!();
    Ok(())
}

/// One watch stream: records when each change arrives.
async fn watcher(
    i: usize,
    mut client: Client,
    seeded: u64,
    timeline: Arc<Timeline>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
    clock: Clock,
) {
    let r = async {
        let mut stream = client
            .watch(v1::WatchRequest {
                node_id: format!("bench-proxy-{i:03}"),
                kind: v1::NodeKind::Proxy.into(),
                last_revision: 0,
                zone: "bench".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            let at = clock.now_ns();
            match ev.event {
                Some(v1::watch_event::Event::Change(_)) => timeline.received(ev.revision, at),
                Some(v1::watch_event::Event::Snapshot(s)) => {
                    anyhow::ensure!(
                        s.revision == seeded,
                        "watcher {i}: snapshot at revision {} instead of {seeded}",
                        s.revision
                    );
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                _ => {} // health updates
            }
        }
        anyhow::bail!("watcher {i}: the stream ended")
    }
    .await;
    let r: anyhow::Result<()> = r;
    if let Err(e) = r {
        failed.store(true, Ordering::Relaxed);
        eprintln!("\nwatcher {i}: {e:#}");
    }
}

#[derive(Clone, Copy)]
struct Shape {
    pools: usize,
    per_pool: usize,
}

/// The k-th change: a new weight for a pseudo-random backend.
async fn write_one(
    c: &mut Client,
    shape: Shape,
    k: usize,
    timeline: &Timeline,
    clock: Clock,
) -> anyhow::Result<()> {
    // A fixed permutation (Knuth's multiplicative hash) spreads changes
    // over pools without a random generator.
    let g = (k.wrapping_mul(2_654_435_761)) % (shape.pools * shape.per_pool);
    let issued = clock.now_ns();
    let reply = c
        .update_backend(v1::UpdateBackendRequest {
            pool: pool_name(g / shape.per_pool),
            address: backend_addr(g),
            weight: Some((k % 1000) as u32 + 1),
            ..Default::default()
        })
        .await?
        .into_inner();
    let returned = clock.now_ns();
    timeline.written(reply.revision, issued, returned);
    Ok(())
}

/// Waits until every watcher has every revision in `range`, with progress.
async fn delivered(
    timeline: &Timeline,
    range: std::ops::Range<u64>,
    args: &Args,
    failed: &AtomicBool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let n = (range.end - range.start) as usize;
    loop {
        anyhow::ensure!(
            !failed.load(Ordering::Relaxed),
            "a watch stream failed (see above)"
        );
        let pending = timeline.pending(range.clone(), args.watchers as u32);
        if pending == 0 {
            println!("  all {n} delivered to every watcher and to the LISTEN client");
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(args.deliver_timeout_s) {
            println!(
                "  {pending}/{n} changes not delivered everywhere after {} s; reporting what arrived",
                args.deliver_timeout_s
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done()? {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

// === figures ===

/// Upper bounds (ms) of the histogram buckets; the last one is open.
const BUCKETS: [f64; 7] = [2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 100.0];

fn histogram_header() -> String {
    let mut lower = "<0".to_string();
    let mut cols = vec![format!("{:>7}", "<=0")];
    for b in BUCKETS {
        cols.push(format!("{:>7}", format!("<={b}")));
        lower = format!(">{b}");
    }
    cols.push(format!("{lower:>7}"));
    cols.join("")
}

fn histogram(samples: &[f64]) -> String {
    let mut counts = [0usize; BUCKETS.len() + 2];
    for &v in samples {
        let i = if v <= 0.0 {
            0
        } else {
            1 + BUCKETS
                .iter()
                .position(|b| v <= *b)
                .unwrap_or(BUCKETS.len())
        };
        counts[i] += 1;
    }
    counts.iter().map(|c| format!("{c:>7}")).collect()
}

struct Report {
    phase: &'static str,
    changes: usize,
    /// Write RPC returned → last watcher received.
    last: Summary,
    /// Write RPC returned → NOTIFY received (signed).
    notify: Summary,
    /// Last watcher − NOTIFY, per change.
    added: Summary,
    /// From the write being issued, for the ratio.
    last_from_issue: Summary,
    notify_from_issue: Summary,
}

impl Report {
    fn print_row(&self) {
        println!(
            "{:<7} {:>7} | {:>8.2} {:>8.2} {:>8.2} | {:>10.3} {:>10.3} | {:>9.2} {:>9.2} | {:>9} {:>9}",
            self.phase,
            self.changes,
            self.last.p50,
            self.last.p99,
            self.last.max,
            self.notify.p50,
            self.notify.p99,
            self.added.p50,
            self.added.p99,
            ratio(self.last_from_issue.p50, self.notify_from_issue.p50),
            ratio(self.last_from_issue.p99, self.notify_from_issue.p99),
        );
    }
}

fn report(
    phase: &'static str,
    t: &Timeline,
    range: std::ops::Range<u64>,
    watchers: usize,
) -> Report {
    let ms = |a: u64, b: u64| (a as f64 - b as f64) / 1e6;
    let mut write = Vec::new();
    let (mut last, mut first, mut notify, mut added) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut last_i, mut notify_i) = (Vec::new(), Vec::new());
    let mut incomplete = 0;
    for i in range.clone().filter_map(|r| t.slot(r)) {
        let issued = t.issued[i].load(Ordering::Relaxed);
        let returned = t.returned[i].load(Ordering::Relaxed);
        if returned == 0 {
            incomplete += 1;
            continue;
        }
        write.push(ms(returned, issued));
        let n = t.notified[i].load(Ordering::Relaxed);
        if n != 0 {
            notify.push(ms(n, returned));
            notify_i.push(ms(n, issued));
        }
        if t.receivers[i].load(Ordering::Acquire) as usize >= watchers {
            let l = t.last[i].load(Ordering::Relaxed);
            last.push(ms(l, returned));
            last_i.push(ms(l, issued));
            first.push(ms(t.first[i].load(Ordering::Relaxed), returned));
            if n != 0 {
                added.push(ms(l, n));
            }
        } else {
            incomplete += 1;
        }
    }
    let show = |label: &str, s: &Option<Summary>| match s {
        Some(s) => println!(
            "  {label:<46} p50 {:>8.3}  p99 {:>8.3}  max {:>8.3}  mean {:>8.3} ms",
            s.p50, s.p99, s.max, s.mean
        ),
        None => println!("  {label:<46} no samples"),
    };
    let empty = Summary {
        n: 0,
        p50: f64::NAN,
        p99: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
        mean: f64::NAN,
    };
    println!("  {phase} ({} changes):", range.end - range.start);
    show("write RPC (issued → returned)", &summarize(&write));
    show(
        "raw NOTIFY (write returned → LISTEN client)",
        &summarize(&notify),
    );
    show(
        "first watcher (write returned → received)",
        &summarize(&first),
    );
    show(
        "LAST watcher (write returned → received)",
        &summarize(&last),
    );
    show(
        "last watcher − raw NOTIFY (Tandem's share)",
        &summarize(&added),
    );
    show(
        "raw NOTIFY (write issued → LISTEN client)",
        &summarize(&notify_i),
    );
    show(
        "last watcher (write issued → received)",
        &summarize(&last_i),
    );
    // The shape of the tail: a mode near 40 ms is Linux's delayed ACK
    // meeting Nagle's algorithm somewhere on the path.
    println!("  histogram, write returned → received (ms):");
    println!("    {:<14} {}", "", histogram_header());
    println!("    {:<14} {}", "first watcher", histogram(&first));
    println!("    {:<14} {}", "last watcher", histogram(&last));
    if incomplete > 0 {
        println!("  {incomplete} changes left out: not received by every watcher in time");
    }
    Report {
        phase,
        changes: last.len(),
        last: summarize(&last).unwrap_or(empty),
        notify: summarize(&notify).unwrap_or(empty),
        added: summarize(&added).unwrap_or(empty),
        last_from_issue: summarize(&last_i).unwrap_or(empty),
        notify_from_issue: summarize(&notify_i).unwrap_or(empty),
    }
}
