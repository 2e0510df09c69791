//! `repofs mount URL MOUNTPOINT` and `repofs check URL`: a repository given
//! on the command line instead of in a config file. The arguments are
//! written out as the config entry they stand for and go through the same
//! parser and validation as a file, so both ways accept and refuse exactly
//! the same things.

use std::path::{Path, PathBuf};

use crate::config::{Config, Provider};

/// What such a config's `path` says in messages.
pub const COMMAND_LINE: &str = "<command line>";

/// The options of a repository given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UrlArgs {
    /// Branch, tag or full commit id (default: the remote HEAD).
    #[arg(long = "ref")]
    pub reference: Option<String>,
    /// Environment variable holding the token.
    #[arg(long, conflicts_with = "token_file")]
    pub token_env: Option<String>,
    /// File holding the token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// github, github-enterprise, gitlab, gitlab-enterprise, bitbucket-server,
    /// git or s3 (inferred for github.com, gitlab.com and s3:// URLs).
    #[arg(long)]
    pub provider: Option<String>,
    /// Repository name, for logs and status (default: from the URL).
    #[arg(long)]
    pub name: Option<String>,
    /// Cache directory (default: $XDG_CACHE_HOME/repofs when set, else
    /// /var/cache/repofs for root and ~/.cache/repofs for others).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// LRU cap of the cache, such as 20GiB.
    #[arg(long)]
    pub cache_size: Option<String>,
    /// Let other users read the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// S3: the bucket's region.
    #[arg(long)]
    pub region: Option<String>,
    /// S3: an S3-compatible endpoint, such as http://127.0.0.1:9000.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// S3: path-style addressing.
    #[arg(long)]
    pub force_path_style: bool,
    /// Serve Prometheus metrics at this address, such as 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Answer no extended attribute calls (faster `ls -l`; no user.repofs.* ids).
    #[arg(long)]
    pub no_xattrs: bool,
}

/// The cache directory used when none is given.
pub fn default_cache_dir() -> PathBuf {
    let from = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(d) = from("XDG_CACHE_HOME") {
        return d.join("repofs");
    }
    // SAFETY: geteuid cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/repofs");
    }
    from("HOME")
        .map(|h| h.join(".cache"))
        .unwrap_or_else(std::env::temp_dir)
        .join("repofs")
}

/// The provider a URL names by itself, if it does.
pub fn infer_provider(url: &str) -> Option<Provider> {
    if url.starts_with("s3://") {
        return Some(Provider::S3);
    }
    let host = url.split_once("://")?.1.split('/').next()?;
    let host = host
        .rsplit('@')
        .next()?
        .split(':')
        .next()?
        .to_ascii_lowercase();
    match host.as_str() {
        "github.com" | "www.github.com" => Some(Provider::Github),
        "gitlab.com" | "www.gitlab.com" => Some(Provider::Gitlab),
        _ => None,
    }
}

/// A repository name from its URL: the last path segment before any
/// browser suffix (`/tree/...`, `/-/...`, `/browse`), without `.git`.
pub fn name_from_url(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let path = path.split("/-/").next().unwrap_or(path);
    let mut segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if url.starts_with("s3://") {
        // s3://bucket/prefix/: the last part of the prefix, else the bucket.
        return clean(segs.last().copied().unwrap_or("bucket"));
    }
    if !segs.is_empty() {
        segs.remove(0); // the host
    }
    if let Some(i) = segs
        .iter()
        .position(|s| matches!(*s, "tree" | "blob" | "browse" | "src"))
        .filter(|i| *i >= 1)
    {
        segs.truncate(i);
    }
    clean(segs.last().copied().unwrap_or("repository"))
}

fn clean(seg: &str) -> String {
    let seg = seg.strip_suffix(".git").unwrap_or(seg);
    let s: String = seg
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("repo{s}")
    } else {
        s
    }
}

/// The config a command line stands for. `mount_point` is `None` for
/// `check`, which mounts nothing.
pub fn config(url: &str, mount_point: Option<&Path>, a: &UrlArgs) -> Result<Config, String> {
    let provider = match (&a.provider, infer_provider(url)) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.as_str().to_string(),
        (None, None) => {
            let all: Vec<&str> = Provider::ALL.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "cannot tell the provider of {url}: pass --provider (one of {})",
                all.join(", ")
            ));
        }
    };
    let name = a.name.clone().unwrap_or_else(|| name_from_url(url));
    let cwd = std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?;
    let absolute = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    let mount_point = match mount_point {
        Some(m) => absolute(m),
        None => std::env::temp_dir().join("repofs-check").join(&name),
    };
    let mount_root = mount_point
        .parent()
        .ok_or_else(|| "the mount point cannot be /".to_string())?
        .to_path_buf();
    let cache_dir = absolute(&a.cache_dir.clone().unwrap_or_else(default_cache_dir));

    let mut top = toml::Table::new();
    let s = |v: &str| toml::Value::String(v.to_string());
    let p = |v: &Path| toml::Value::String(v.to_string_lossy().into_owned());
    top.insert("mount_root".into(), p(&mount_root));
    top.insert("cache_dir".into(), p(&cache_dir));
    if let Some(c) = &a.cache_size {
        top.insert("cache_size".into(), s(c));
    }
    top.insert("allow_other".into(), toml::Value::Boolean(a.allow_other));
    if let Some(m) = &a.metrics_listen {
        top.insert("metrics_listen".into(), s(m));
    }
    if a.no_xattrs {
        top.insert("xattrs".into(), toml::Value::Boolean(false));
    }
    let mut repo = toml::Table::new();
    repo.insert("name".into(), s(&name));
    repo.insert("provider".into(), s(&provider));
    repo.insert("mount_point".into(), p(&mount_point));
    repo.insert("description".into(), s("mounted from the command line"));
    if provider == "s3" {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            format!("{url}: an S3 location is written s3://BUCKET or s3://BUCKET/PREFIX")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        repo.insert("bucket".into(), s(bucket));
        if !prefix.is_empty() {
            repo.insert("prefix".into(), s(prefix));
        }
        for (key, v) in [("region", &a.region), ("endpoint_url", &a.endpoint_url)] {
            if let Some(v) = v {
                repo.insert(key.into(), s(v));
            }
        }
        if a.force_path_style {
            repo.insert("force_path_style".into(), toml::Value::Boolean(true));
        }
        if a.token_env.is_some() || a.token_file.is_some() || a.reference.is_some() {
            return Err(
                "--token-env, --token-file and --ref are for git repositories; S3 credentials come from the AWS environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
                    .into(),
            );
        }
    } else {
        repo.insert("url".into(), s(url));
        if let Some(r) = &a.reference {
            repo.insert("ref".into(), s(r));
        }
        if let Some(t) = &a.token_env {
            repo.insert("token_env".into(), s(t));
        }
        if let Some(t) = &a.token_file {
            repo.insert("token_file".into(), p(&absolute(t)));
        }
        if a.region.is_some() || a.endpoint_url.is_some() || a.force_path_style {
            return Err(
                "--region, --endpoint-url and --force-path-style are for s3:// URLs".into(),
            );
        }
    }
    top.insert(
        "repository".into(),
        toml::Value::Array(vec![toml::Value::Table(repo)]),
    );
    let text = toml::to_string(&top).map_err(|e| format!("cannot build the config: {e}"))?;
    Config::parse(Path::new(COMMAND_LINE), &text, &|v| std::env::var(v).ok())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_are_inferred_from_well_known_hosts() {
        assert_eq!(
            infer_provider("https://github.com/BurntSushi/ripgrep"),
            Some(Provider::Github)
        );
        assert_eq!(
            infer_provider("https://GitLab.com/a/b/c.git"),
            Some(Provider::Gitlab)
        );
        assert_eq!(infer_provider("s3://bucket/p/"), Some(Provider::S3));
        assert_eq!(infer_provider("https://git.example.org/x.git"), None);
        assert_eq!(infer_provider("http://127.0.0.1:8080/x.git"), None);
        assert_eq!(infer_provider("not a url"), None);
    }

    #[test]
    fn names_come_from_the_url() {
        assert_eq!(
            name_from_url("https://github.com/BurntSushi/ripgrep"),
            "ripgrep"
        );
        assert_eq!(name_from_url("https://github.com/a/b.git"), "b");
        assert_eq!(name_from_url("https://github.com/a/b/tree/main/src"), "b");
        assert_eq!(
            name_from_url("https://gitlab.com/g/sub/proj/-/tree/main"),
            "proj"
        );
        assert_eq!(
            name_from_url("https://bb.acme/projects/DATA/repos/etl/browse"),
            "etl"
        );
        assert_eq!(name_from_url("http://127.0.0.1:99/x.git"), "x");
        assert_eq!(name_from_url("s3://bucket/data/sets/"), "sets");
        assert_eq!(name_from_url("s3://bucket"), "bucket");
        assert_eq!(name_from_url("https://h/a/we ird$"), "we-ird-");
    }

    #[test]
    fn a_command_line_becomes_a_validated_config() {
        let a = UrlArgs {
            provider: Some("git".into()),
            cache_dir: Some("/tmp/c".into()),
            reference: Some("main".into()),
            ..Default::default()
        };
        let c = config("http://127.0.0.1:1/x.git", Some(Path::new("/mnt/x")), &a).unwrap();
        assert_eq!(c.path, Path::new(COMMAND_LINE));
        assert_eq!(c.repositories.len(), 1);
        let r = &c.repositories[0];
        assert_eq!(
            (r.name.as_str(), r.mount_point.as_path()),
            ("x", Path::new("/mnt/x"))
        );
        assert_eq!(r.reference.as_deref(), Some("main"));
        assert_eq!(c.cache_dir, Path::new("/tmp/c"));

        let e = config(
            "https://git.example.org/x.git",
            Some(Path::new("/m/x")),
            &UrlArgs::default(),
        )
        .unwrap_err();
        assert!(e.contains("--provider"), "{e}");
        let bad = UrlArgs {
            provider: Some("gitbucket".into()),
            ..Default::default()
        };
        let e = config("https://h/x.git", Some(Path::new("/m/x")), &bad).unwrap_err();
        assert!(e.starts_with(COMMAND_LINE), "{e}");

        let s3 = UrlArgs {
            endpoint_url: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            ..Default::default()
        };
        let c = config("s3://bkt/data/", Some(Path::new("/m/d")), &s3).unwrap();
        let b = c.repositories[0].s3.as_ref().unwrap();
        assert_eq!((b.bucket.as_str(), b.prefix.as_str()), ("bkt", "data/"));
        let e = config(
            "s3://bkt",
            Some(Path::new("/m/d")),
            &UrlArgs {
                token_env: Some("T".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.contains("AWS"), "{e}");
    }
}
