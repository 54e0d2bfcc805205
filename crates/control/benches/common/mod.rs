//! Helpers shared by the control-plane benchmarks: percentiles, formatting,
//! a monotonic clock in nanoseconds, and the file of child pids the shell
//! entry points clean up after an interrupted run.

#![allow(dead_code)] // each benchmark uses a subset

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// A benchmark's `main`: under `cargo test` nothing (see
/// [`invoked_as_benchmark`]); under `cargo bench` or its shell entry point,
/// `run` with the parsed arguments on a two-thread runtime.
pub fn main<A, F>(run: impl FnOnce(A) -> F) -> anyhow::Result<()>
where
    A: clap::Parser,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    if !invoked_as_benchmark() {
        return Ok(());
    }
    let args = A::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

// The arguments every benchmark takes besides its own
// (`#[command(flatten)]`); a plain comment, since clap would show a doc
// comment as the benchmark's description.
#[derive(Debug, clap::Args)]
pub struct Shared {
    /// Child pids are appended here (the shell entry point cleans up).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `cargo test --all-targets` runs bench targets without `--bench`: a
/// benchmark must not start clusters then. True when it should run.
pub fn invoked_as_benchmark() -> bool {
    if std::env::args().any(|a| a == "--bench") {
        return true;
    }
    eprintln!("benchmark skipped (not run by `cargo bench`; see scripts/bench/)");
    false
}

/// Parses `KEY=VALUE` (clap value parser).
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Nanoseconds since the start of the run, comparable across tasks.
#[derive(Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Summary of one set of samples, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentiles (p99 of 20 samples is the largest).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let r = (p / 100.0 * s.len() as f64).ceil() as usize;
        s[r.clamp(1, s.len()) - 1]
    };
    Some(Summary {
        n: s.len(),
        p50: rank(50.0),
        p99: rank(99.0),
        min: s[0],
        max: s[s.len() - 1],
        mean: s.iter().sum::<f64>() / s.len() as f64,
    })
}

/// `a / b` as "3.2x", or "n/a" when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

/// Appends child pids to the file the shell entry point kills on exit, so
/// an interrupted run (Ctrl-C skips destructors) leaves nothing behind.
#[derive(Clone)]
pub struct PidFile(Option<PathBuf>);

impl PidFile {
    pub fn new(path: Option<PathBuf>) -> PidFile {
        PidFile(path)
    }

    pub fn record(&self, pid: Option<u32>) {
        let (Some(path), Some(pid)) = (&self.0, pid) else {
            return;
        };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{pid}"));
        if let Err(e) = written {
            eprintln!(
                "warning: cannot record pid {pid} in {}: {e}",
                path.display()
            );
        }
    }
}

/// A control-API client on its own connection, presenting `token`.
pub type Client = tandem_testkit::AuthedClient;

/// Connects a new client (one TCP connection) to `endpoint` (`http://…`).
pub async fn connect(endpoint: &str, token: &str) -> anyhow::Result<Client> {
    tandem_testkit::client_at(endpoint, Some(token)).await
}
