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
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem-proxy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // One worker: a single-threaded runtime, like one nginx worker, without
    // the work-stealing scheduler's cross-thread bookkeeping.
    let workers = args.worker_threads();
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tandem-proxy")
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tandem-proxy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(args, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tandem-proxy stopped");
            eprintln!("tandem-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
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
    let admin = bind(args.admin_listen).await?;
    tracing::info!(admin = %args.admin_listen, workers = args.worker_threads(), "starting");
    let result = tandem_proxy::run(
        settings,
        listener,
        admin,
        telemetry.prometheus(),
        tandem_telemetry::shutdown_signal(),
    )
    .await;
    telemetry.shutdown();
    result
}
