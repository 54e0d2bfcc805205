//! `tandemctl`, the command-line client of the Tandem control API
//! (`tandem.v1.ControlPlane`): pools, backends, routes, status, backend
//! health, the raft group, watch and snapshots, as tables for people or JSON
//! for scripts.
//!
//! It talks to the control plane over gRPC (and, for `explain --admin`,
//! to one proxy's admin port) and must never reach Postgres or hold logic of its own: bounds and defaults are the control
//! plane's, so its errors (naming the field) are shown as they come, and each
//! gRPC code family maps to its own exit code (see [`error::exit`]).

mod certs;
mod cli;
mod commands;
mod duration;
mod error;
mod explain;
mod output;

use std::process::ExitCode;

pub use cli::Cli;
pub use error::CtlError;

/// Runs one command against the control plane, writing its output to stdout.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    commands::preflight(&cli.command)?;
    if let cli::Command::Certs(c) = cli.command {
        let stdout = std::io::stdout();
        return certs::run(c, &mut stdout.lock());
    }
    // `explain --admin` asks a proxy directly: no control plane needed.
    if let cli::Command::Explain(args) = &cli.command
        && let Some(admin) = &args.admin
    {
        let stdout = std::io::stdout();
        // The proxy's /explain asks for a token (its TANDEM_ADMIN_TOKEN or
        // its control-plane token): the one tandemctl has, if any.
        let token = commands::load_token(&cli.global)?;
        return explain::direct(
            args,
            admin,
            token.as_deref(),
            cli.global.timeout,
            cli.global.output,
            &mut stdout.lock(),
        )
        .await;
    }
    let session = commands::Session::connect(&cli.global).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    session.run(cli.command, &mut out).await
}

/// The process's exit: one `error: ...` line on stderr and the code of its
/// kind.
pub fn exit(result: Result<(), CtlError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
