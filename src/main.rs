//! The `repofs` command line: parses arguments and dispatches, nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use repofs::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "repofs",
    version,
    about = "Mount remote repositories as read-only directory trees"
)]
struct Cli {
    /// Path of the configuration file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount every configured repository and serve them until SIGTERM/SIGINT.
    Mount,
    /// Test the connection to repositories: reachability, credentials, ref.
    Check {
        /// Repository names (default: all).
        names: Vec<String>,
    },
    /// Show what a running daemon is serving: each repository and the cache.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REPOFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("repofs: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Mount => match repofs::daemon::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("repofs: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status => match repofs::status::show(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("repofs: {e}");
                ExitCode::from(3)
            }
        },
        Command::Check { names } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("repofs: cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(repofs::check::check_all(&config, &names)) {
                Ok(lines) => {
                    for l in &lines {
                        println!("{l}");
                    }
                    if lines.iter().all(|l| l.ok) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("repofs: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
