//! The `repofs` command line: parses arguments and dispatches, nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use repofs::config::{Config, DEFAULT_CONFIG_PATH, Secrets};
use repofs::url_mount::UrlArgs;

/// The version, and the commit the binary was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("REPOFS_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "repofs",
    version = VERSION,
    about = "Mount remote repositories as read-only directory trees"
)]
struct Cli {
    /// Path of the configuration file (default: /etc/repofs/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount every configured repository, or the one URL given, and serve
    /// until SIGTERM/SIGINT.
    Mount {
        /// A repository URL (https://..., s3://BUCKET[/PREFIX]); no config file needed.
        #[arg(requires = "mount_point")]
        url: Option<String>,
        /// Where to mount the URL.
        mount_point: Option<PathBuf>,
        #[command(flatten)]
        opts: UrlArgs,
    },
    /// Test the connection to repositories: reachability, credentials, ref.
    Check {
        /// Repository names (default: all), or one URL.
        names: Vec<String>,
        #[command(flatten)]
        opts: UrlArgs,
    },
    /// Show what a running daemon is serving: each repository, transfers in
    /// flight and the cache.
    Status {
        /// The daemon's cache directory (instead of the config's).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Fetch every file under the paths into the cache, with progress.
    Prefetch {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Files read at once.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        /// The daemon's cache directory, to report its traffic.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Mount a throwaway writable view (overlayfs) of a mounted repository.
    Overlay {
        /// A configured repository name, or the path of a repofs mount.
        #[arg(required_unless_present = "remove", requires = "dir")]
        name: Option<String>,
        /// Where the view appears.
        dir: Option<PathBuf>,
        /// Unmount the view at this directory and delete what was written there.
        #[arg(long, value_name = "DIR", conflicts_with = "name")]
        remove: Option<PathBuf>,
        /// Where the view's writes are kept (default: the config's cache_dir,
        /// or the default cache directory for a path).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Authorize repofs once with an OAuth application (device flow) and
    /// write the grant file the daemon uses and renews.
    Login {
        #[command(subcommand)]
        host: LoginHost,
    },
    /// List or edit the repositories in the config file (comments are kept).
    Repo {
        #[command(subcommand)]
        action: RepoAction,
    },
}

#[derive(Subcommand)]
enum LoginHost {
    /// GitLab (gitlab.com or self-managed): OAuth 2.0 Device Authorization Grant.
    Gitlab {
        /// GitLab's base URL, such as https://gitlab.example.com.
        #[arg(long)]
        url: String,
        /// The application's ID (Settings > Applications).
        #[arg(long)]
        client_id: String,
        /// Scopes asked for, space-separated.
        #[arg(long, default_value = "read_repository")]
        scope: String,
        /// Where the grant is written (0600); name it in the repository's
        /// `gitlab_app = { client_id, grant_file }`.
        #[arg(long)]
        grant_file: PathBuf,
        /// A PEM file of certificate authorities to trust beside the
        /// system's (a GitLab behind a private CA).
        #[arg(long)]
        ca_bundle: Option<PathBuf>,
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

/// Whose secrets a command needs: `mount` every repository's, `check NAME`
/// only NAME's, the others none (they send no request).
fn secrets_for(command: &Command) -> Secrets {
    match command {
        Command::Mount { .. } => Secrets::All,
        Command::Check { names, .. } if names.is_empty() => Secrets::All,
        Command::Check { names, .. } => Secrets::Only(names.clone()),
        _ => Secrets::None,
    }
}

fn main() -> ExitCode {
    // Before anything is written: whatever repofs creates is its user's alone.
    repofs::private::restrict_umask();
    let cli = Cli::parse();
    let explicit_config = cli.config.is_some();
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REPOFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let load_for = |secrets: &Secrets| match Config::load_with(&config_path, secrets) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("repofs: {e}");
            Err(ExitCode::from(2))
        }
    };
    // Commands that send no request resolve no secret.
    let load = || load_for(&Secrets::None);
    // The config file, when the command can do without one.
    let optional = || {
        (explicit_config || config_path.exists())
            .then(|| Config::load_with(&config_path, &Secrets::None).ok())
            .flatten()
    };
    let from_url = |url: &str, mount_point: Option<&std::path::Path>, opts: &UrlArgs| {
        repofs::url_mount::config(url, mount_point, opts).map_err(|e| {
            eprintln!("repofs: {e}");
            ExitCode::from(2)
        })
    };
    let config = match cli.command {
        Command::Repo { action } => return repo(&config_path, action, &load),
        Command::Login { host } => return login(host),
        Command::Prefetch {
            paths,
            jobs,
            cache_dir,
        } => {
            let mut status_files: Vec<PathBuf> = optional()
                .map(|c| repofs::daemon::status_path(&c))
                .into_iter()
                .collect();
            if let Some(dir) = cache_dir {
                status_files.push(repofs::status::status_file(&dir));
            }
            status_files.extend(repofs::status::registered());
            return match repofs::prefetch::run(&paths, jobs, &status_files) {
                Ok(o) if o.failed == 0 => ExitCode::SUCCESS,
                Ok(o) => {
                    eprintln!("repofs: {} of {} files failed", o.failed, o.files);
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("repofs: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Overlay {
            name,
            dir,
            remove,
            cache_dir,
        } => return overlay(name, dir, remove, cache_dir, &optional, &load),
        Command::Status {
            cache_dir: Some(dir),
        } => return status(&repofs::status::status_file(&dir)),
        Command::Status { cache_dir: None } if !explicit_config && !config_path.exists() => {
            // No config: every daemon running (mounted from the command line).
            let found = repofs::status::registered();
            if found.is_empty() {
                eprintln!(
                    "repofs: no daemon is running (and there is no config at {})",
                    config_path.display()
                );
                return ExitCode::from(3);
            }
            let mut code = ExitCode::SUCCESS;
            for f in found {
                if status(&f) != ExitCode::SUCCESS {
                    code = ExitCode::from(3);
                }
            }
            return code;
        }
        Command::Mount {
            url: Some(ref url),
            ref mount_point,
            ref opts,
        } => match from_url(url, mount_point.as_deref(), opts) {
            Ok(c) => c,
            Err(code) => return code,
        },
        Command::Check {
            ref names,
            ref opts,
        } if names.iter().any(|n| n.contains("://")) => {
            if names.len() != 1 {
                eprintln!("repofs: check takes one URL, or repository names");
                return ExitCode::from(2);
            }
            match from_url(&names[0], None, opts) {
                Ok(c) => c,
                Err(code) => return code,
            }
        }
        _ => match load_for(&secrets_for(&cli.command)) {
            Ok(c) => c,
            Err(code) => return code,
        },
    };
    match cli.command {
        Command::Repo { .. }
        | Command::Prefetch { .. }
        | Command::Overlay { .. }
        | Command::Login { .. } => {
            unreachable!("handled above")
        }
        Command::Mount { .. } => match repofs::daemon::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("repofs: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status { .. } => status(&repofs::daemon::status_path(&config)),
        Command::Check { names, .. } => {
            let names: Vec<String> = if names.iter().any(|n| n.contains("://")) {
                Vec::new()
            } else {
                names
            };
            check(&config, &names)
        }
    }
}

fn status(path: &std::path::Path) -> ExitCode {
    match repofs::status::show(path) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("repofs: {e}");
            ExitCode::from(3)
        }
    }
}

fn login(host: LoginHost) -> ExitCode {
    let LoginHost::Gitlab {
        url,
        client_id,
        scope,
        grant_file,
        ca_bundle,
    } = host;
    let Some(rt) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let args = repofs::auth::gitlab_login::LoginArgs {
        url,
        client_id,
        scope,
        grant_file,
        ca_bundle,
        timeout: std::time::Duration::from_secs(30),
    };
    match rt.block_on(repofs::auth::gitlab_login::login(
        &args,
        &mut std::io::stdout(),
    )) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("repofs: login failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A runtime for a command that talks to servers; `None` (said on
/// stderr) when it cannot be made.
fn runtime(builder: &mut tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("repofs: cannot start: {e}");
            None
        }
    }
}

fn check(config: &Config, names: &[String]) -> ExitCode {
    let Some(rt) = runtime(&mut tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(repofs::check::check_all(config, names)) {
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

fn overlay(
    name: Option<String>,
    dir: Option<PathBuf>,
    remove: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    optional: &dyn Fn() -> Option<Config>,
    load: &dyn Fn() -> Result<Config, ExitCode>,
) -> ExitCode {
    if let Some(view) = remove {
        return match repofs::overlay::remove(&view) {
            Ok(base) => {
                println!(
                    "removed the writable view at {} and what was written there ({})",
                    view.display(),
                    base.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("repofs: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (Some(name), Some(dir)) = (name, dir) else {
        eprintln!("repofs: overlay takes NAME DIR, or --remove DIR");
        return ExitCode::from(2);
    };
    // A path names a mount directly; a name is looked up in the config.
    let is_mount = |n: &str| {
        std::path::Path::new(n)
            .canonicalize()
            .is_ok_and(|p| repofs::mountinfo::mount_at(&p).is_some())
    };
    let (lower, config_cache) = if name.contains('/') || is_mount(&name) {
        match std::path::Path::new(&name).canonicalize() {
            Ok(p) => (p, optional().map(|c| c.cache_dir)),
            Err(e) => {
                eprintln!("repofs: {name}: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        let config = match load() {
            Ok(c) => c,
            Err(code) => return code,
        };
        match config.repositories.iter().find(|r| r.name == name) {
            Some(r) => (r.mount_point.clone(), Some(config.cache_dir.clone())),
            None => {
                eprintln!(
                    "repofs: no repository named '{name}' in {}",
                    config.path.display()
                );
                return ExitCode::from(2);
            }
        }
    };
    let cache_dir = cache_dir
        .or(config_cache)
        .unwrap_or_else(repofs::url_mount::default_cache_dir);
    match repofs::overlay::create(&lower, &dir, &cache_dir) {
        Ok(upper) => {
            println!(
                "writable view of {name} at {} (changes are kept in {} and never reach the remote)",
                dir.display(),
                upper.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("repofs: {e}");
            ExitCode::FAILURE
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
