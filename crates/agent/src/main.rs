//! `tandem-agent`: parses flags, sets up telemetry, runs the library.

use clap::Parser;
use tandem_agent::{Args, Error};

// Every probe allocates a few small objects (its request, the answer's
// header map, the observation it reports); glibc's malloc and free showed
// up at ~10% of the agent's CPU, mimalloc's per-thread free lists are
// several times cheaper (as in the proxy).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = args.settings();
    // Probes are I/O-bound: one thread by default is both enough and the
    // cheapest (no cross-thread wake-ups).
    let workers = args.workers;
    tandem_telemetry::run_node_with("tandem-agent", workers, settings, |s| start(args, s))
}

async fn start(args: Args, settings: tandem_agent::Settings) -> Result<(), Error> {
    let telemetry = tandem_telemetry::init("tandem-agent", &args.telemetry)
        .map_err(|e| Error::Config(e.to_string()))?;
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| Error::Listen {
            addr: args.admin_listen,
            source,
        })?;
    let result = tandem_agent::run(
        settings,
        admin,
        telemetry.prometheus(),
        tandem_telemetry::shutdown_signal(),
    )
    .await;
    telemetry.shutdown();
    result
}
