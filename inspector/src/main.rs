//! The `synscope` binary: parse, run, map errors to exit codes (0 ok, 1 runtime, 2 usage).

use std::process::ExitCode;

use synscope::loader::LoadError;

fn main() -> ExitCode {
    let cli = synscope::cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(synscope::LogWriter)
        .with_env_filter(filter)
        .with_target(false);
    if cli.log_format == synscope::cli::LogFormat::Json {
        logs.json().init();
    } else {
        // Colour only on a terminal: logs piped to journald or a file stay plain text.
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let json_logs = cli.log_format == synscope::cli::LogFormat::Json;
    match synscope::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `synscope man | head`: a reader that went away is no failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json_logs {
                // One JSON object per line on stderr, the fatal one too.
                tracing::error!(error = %format!("{e:#}"), "synscope: error");
            } else {
                eprintln!("synscope: error: {e:#}");
            }
            let code = match e.downcast_ref::<LoadError>() {
                Some(l) => l.exit_code(),
                // A bad config file is a usage error, like a bad flag.
                None if e.is::<synscope::cli::config::ConfigError>() => 2,
                None if e.is::<synscope::cli::SizeError>() => 2,
                None => 1,
            };
            ExitCode::from(code as u8)
        }
    }
}
