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
    /// List or edit the repositories in the config file (comments are kept).
    Repo {
        #[command(subcommand)]
        action: RepoAction,
    },
}

#[derive(Subcommand)]
enum RepoAction {
    /// List repositories (credentials are described, never shown).
    List,
    /// Add a repository.
    Add {
        name: String,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        url: String,
        #[arg(long = "ref")]
        reference: Option<String>,
        /// File holding the token (preferred: never put secrets on a command line).
        #[arg(long)]
        token_file: Option<String>,
        /// Environment variable holding the token.
        #[arg(long)]
        token_env: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        mount_point: Option<String>,
        #[arg(long)]
        refresh: Option<String>,
        /// Tell the running daemon to reload afterwards.
        #[arg(long)]
        reload: bool,
    },
    /// Remove a repository.
    Remove {
        name: String,
        #[arg(long)]
        reload: bool,
    },
    /// Remove a repository's credentials (it becomes public-only).
    ClearCredentials {
        name: String,
        #[arg(long)]
        reload: bool,
    },
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
    let load = || match Config::load(&cli.config) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("repofs: {e}");
            Err(ExitCode::from(2))
        }
    };
    if let Command::Repo { action } = cli.command {
        return repo(&cli.config, action, &load);
    }
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Repo { .. } => unreachable!("handled above"),
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

fn repo(
    path: &std::path::Path,
    action: RepoAction,
    load: &dyn Fn() -> Result<Config, ExitCode>,
) -> ExitCode {
    use repofs::repo_cmd;
    let (result, reload) = match action {
        RepoAction::List => {
            return match load() {
                Ok(c) => {
                    print!("{}", repo_cmd::list(&c));
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            };
        }
        RepoAction::Add {
            name,
            provider,
            url,
            reference,
            token_file,
            token_env,
            description,
            mount_point,
            refresh,
            reload,
        } => {
            let o = repo_cmd::AddOptions {
                name,
                provider,
                url,
                reference,
                token_file,
                token_env,
                description,
                mount_point,
                refresh,
            };
            (repo_cmd::add(path, &o), reload)
        }
        RepoAction::Remove { name, reload } => (repo_cmd::remove(path, &name), reload),
        RepoAction::ClearCredentials { name, reload } => {
            (repo_cmd::clear_credentials(path, &name), reload)
        }
    };
    match result {
        Ok(msg) => println!("{msg}"),
        Err(e) => {
            eprintln!("repofs: {e}");
            return ExitCode::from(2);
        }
    }
    if reload {
        let config = match load() {
            Ok(c) => c,
            Err(code) => return code,
        };
        match repo_cmd::reload(&config) {
            Ok(msg) => println!("{msg}"),
            Err(e) => {
                eprintln!("repofs: {e}");
                return ExitCode::from(3);
            }
        }
    }
    ExitCode::SUCCESS
}
