//! `tandemctl`: see `tandemctl --help`; the behaviour lives in the library.

use std::process::ExitCode;

use tandem_ctl::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tandem_ctl::exit(runtime.block_on(tandem_ctl::run(cli)))
}
