//! The `synscope` binary: parse, run, map errors to exit codes (0 ok, 1 runtime, 2 usage).

use std::process::ExitCode;

use clap::Parser;
use synscope::{cli::Cli, loader::LoadError};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SYNSCOPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        // Colour only on a terminal: logs piped to journald or a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match synscope::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synscope: error: {e:#}");
            let code = e
                .downcast_ref::<LoadError>()
                .map_or(1, LoadError::exit_code);
            ExitCode::from(code as u8)
        }
    }
}
