//! `tandem-proxy`: parses flags, sets up telemetry, runs the library.

use clap::Parser;
use tandem_proxy::{Args, Error};

// The request path allocates a few small objects per request (header
// values, channel nodes); mimalloc's per-thread free lists make those
// several times cheaper than glibc's malloc, which showed up at ~7% of CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = args.settings();
    // One worker: a single-threaded runtime, like one nginx worker.
    let workers = args.worker_threads();
    tandem_telemetry::run_node_with("tandem-proxy", workers, settings, |s| start(args, s))
}

async fn start(args: Args, settings: tandem_proxy::Settings) -> Result<(), Error> {
    let telemetry = tandem_telemetry::init("tandem-proxy", &args.telemetry)
        .map_err(|e| Error::Config(e.to_string()))?;
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })
    };
    let listener = bind(args.listen).await?;
    let tls_listener = match args.tls_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let admin = bind(args.admin_listen).await?;
    tracing::info!(admin = %args.admin_listen, workers = args.worker_threads(), "starting");
    let result = tandem_proxy::run(
        settings,
        listener,
        tls_listener,
        admin,
        telemetry.prometheus(),
        telemetry.span_sink(),
        tandem_telemetry::shutdown_signal(),
    )
    .await;
    telemetry.shutdown();
    result
}
