//! `tandem-agent`: parses flags, sets up telemetry, runs the library.

use clap::Parser;
use tandem_agent::{Args, Error};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Probes are I/O-bound: one thread by default is both enough and the
    // cheapest (no cross-thread wake-ups).
    let runtime = if args.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .thread_name("tandem-agent")
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tandem-agent: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(args, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tandem-agent stopped");
            eprintln!("tandem-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
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
