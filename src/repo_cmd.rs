//! `repofs repo add|list|remove|clear-credentials`: edits the config file in
//! place with `toml_edit`, so comments and layout survive. Every edit is
//! validated as a whole config before it is written; the file is replaced
//! atomically (temp file in the same directory, same mode, rename); with
//! `--reload` the running daemon is told to reload (SIGHUP). `list` never
//! prints a secret.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, value};

use crate::config::Config;

/// Options of `repo add`.
#[derive(Debug, Default, Clone)]
pub struct AddOptions {
    pub name: String,
    pub provider: String,
    pub url: String,
    pub reference: Option<String>,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub description: Option<String>,
    pub mount_point: Option<String>,
    pub refresh: Option<String>,
}

fn read_doc(path: &Path) -> Result<(String, DocumentMut), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let doc = text
        .parse::<DocumentMut>()
        .map_err(|e| format!("{}: not valid TOML: {e}", path.display()))?;
    Ok((text, doc))
}

fn find(doc: &DocumentMut, name: &str) -> Option<usize> {
    doc.get("repository")
        .and_then(Item::as_array_of_tables)?
        .iter()
        .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
}

/// Validates the edited text as a config, then replaces the file atomically.
fn write_validated(path: &Path, text: &str) -> Result<(), String> {
    // The secrets are not read: they may be at hand only for the service.
    let env = |v: &str| std::env::var(v).ok();
    Config::parse_with(path, text, &env, &crate::config::Secrets::None)
        .map_err(|e| format!("not written, the result would be invalid: {e}"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.repofs-tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config"),
        std::process::id()
    ));
    let mode = std::fs::metadata(path).map(|m| m.permissions());
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(mode) = &mode {
            f.set_permissions(mode.clone())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: cannot write: {e}", path.display()));
    }
    Ok(())
}

pub fn add(path: &Path, o: &AddOptions) -> Result<String, String> {
    let (_, mut doc) = read_doc(path)?;
    if find(&doc, &o.name).is_some() {
        return Err(format!(
            "a repository named '{}' already exists in {}",
            o.name,
            path.display()
        ));
    }
    let mut t = Table::new();
    t.insert("name", value(&o.name));
    t.insert("provider", value(&o.provider));
    t.insert("url", value(&o.url));
    let optional = [
        ("ref", &o.reference),
        ("token_file", &o.token_file),
        ("token_env", &o.token_env),
        ("description", &o.description),
        ("mount_point", &o.mount_point),
        ("refresh", &o.refresh),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            t.insert(k, value(v.as_str()));
        }
    }
    let repos = doc
        .entry("repository")
        .or_insert(Item::ArrayOfTables(Default::default()));
    let Some(array) = repos.as_array_of_tables_mut() else {
        return Err(format!(
            "{}: `repository` is not written as [[repository]] tables",
            path.display()
        ));
    };
    array.push(t);
    write_validated(path, &doc.to_string())?;
    Ok(format!("added repository '{}'", o.name))
}

pub fn remove(path: &Path, name: &str) -> Result<String, String> {
    let (_, mut doc) = read_doc(path)?;
    let i = find(&doc, name).ok_or_else(|| no_such(path, name))?;
    if let Some(a) = doc
        .get_mut("repository")
        .and_then(Item::as_array_of_tables_mut)
    {
        a.remove(i);
        if a.is_empty() {
            doc.remove("repository");
        }
    }
    write_validated(path, &doc.to_string())?;
    Ok(format!("removed repository '{name}'"))
}

/// Removes every credential key from an entry: the repository becomes
/// public-only.
pub fn clear_credentials(path: &Path, name: &str) -> Result<String, String> {
    let (_, mut doc) = read_doc(path)?;
    let i = find(&doc, name).ok_or_else(|| no_such(path, name))?;
    let mut removed = Vec::new();
    if let Some(t) = doc
        .get_mut("repository")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|a| a.get_mut(i))
    {
        for key in [
            "token",
            "token_env",
            "token_file",
            "username",
            "github_app",
            "gitlab_app",
            "access_key_id",
            "secret_access_key",
            "secret_access_key_file",
            "session_token",
            "profile",
        ] {
            if t.remove(key).is_some() {
                removed.push(key);
            }
        }
    }
    if removed.is_empty() {
        return Ok(format!("repository '{name}' has no credentials"));
    }
    write_validated(path, &doc.to_string())?;
    Ok(format!(
        "cleared {} from repository '{name}'",
        removed.join(", ")
    ))
}

/// One line per repository; credentials are described, never shown.
pub fn list(config: &Config) -> String {
    let mut out = String::new();
    for r in &config.repositories {
        let s3_auth = r.s3.as_ref().map(|s| match &s.credentials {
            crate::config::S3Credentials::Anonymous => "anonymous (unsigned)".to_string(),
            crate::config::S3Credentials::Auto { profile: Some(p) } => format!("AWS profile {p}"),
            crate::config::S3Credentials::Auto { profile: None } => {
                "AWS credential chain, else unsigned".to_string()
            }
            crate::config::S3Credentials::Static { access_key_id, .. } => {
                format!("access key {access_key_id}")
            }
        });
        let auth = match (&r.token, &r.github_app) {
            _ if s3_auth.is_some() => s3_auth.unwrap_or_default(),
            (_, Some(app)) => format!(
                "github app {} (installation {})",
                app.app_id, app.installation_id
            ),
            _ if r.gitlab_app.is_some() => format!(
                "gitlab app grant {}",
                r.gitlab_app
                    .as_ref()
                    .map(|a| a.grant_file.display().to_string())
                    .unwrap_or_default()
            ),
            (Some(t), None) if t.origin == "token" => "token (inline)".to_string(),
            (Some(t), None) => t.origin.clone(),
            (None, None) => "public (no credentials)".to_string(),
        };
        out.push_str(&format!(
            "{}\t{}\t{}\tref={}\t{}\t{}\t{}\n",
            r.name,
            r.provider.as_str(),
            r.url,
            r.reference.as_deref().unwrap_or("HEAD"),
            r.mount_point.display(),
            auth,
            r.description
        ));
    }
    out
}

fn no_such(path: &Path, name: &str) -> String {
    format!("no repository named '{name}' in {}", path.display())
}

/// Sends SIGHUP to the daemon serving `config` (found through its status file).
pub fn reload(config: &Config) -> Result<String, String> {
    let path = crate::daemon::status_path(config);
    let text = std::fs::read_to_string(&path)
        .map_err(|_| format!("repofs is not running (no status at {})", path.display()))?;
    let doc = serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| format!("{} is unreadable: {e}", path.display()))?;
    // Only a process verified to be a repofs daemon is signalled: the pid
    // of a daemon that exited may belong to anything by now.
    let pid = crate::status::daemon_pid(&doc, &path).map_err(|e| e.to_string())?;
    // SAFETY: kill(2) of a process just verified to be a repofs daemon.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(format!(
            "cannot signal repofs (pid {pid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(format!("asked repofs (pid {pid}) to reload"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str = r#"# Company mounts. Keep this file tidy!
mount_root = "/mnt/repos"   # where they appear
cache_dir = "/var/cache/repofs"

# --- the main model ---
[[repository]]
name = "churn"      # short name
provider = "github"
url = "https://github.com/acme/churn"
token_env = "GH_TOKEN"  # set by systemd

# public stuff
[[repository]]
name = "public"
provider = "git"
url = "https://git.example.org/p.git"
description = "public"
"#;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, COMMENTED).unwrap();
        (dir, p)
    }

    #[test]
    fn add_then_remove_round_trips_byte_for_byte() {
        // SAFETY: tests in this module only read this variable.
        unsafe { std::env::set_var("GH_TOKEN", "x") };
        let (d, p) = setup();
        let tok = d.path().join("tok");
        std::fs::write(&tok, "t\n").unwrap();
        let o = AddOptions {
            name: "extra".into(),
            provider: "gitlab".into(),
            url: "https://gitlab.com/a/b".into(),
            token_file: Some(tok.display().to_string()),
            description: Some("added".into()),
            ..Default::default()
        };
        add(&p, &o).unwrap();
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(
            after.starts_with(COMMENTED),
            "existing text changed:\n{after}"
        );
        assert!(after.contains("name = \"extra\""));
        remove(&p, "extra").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), COMMENTED);
    }

    #[test]
    fn remove_and_clear_keep_the_rest() {
        unsafe { std::env::set_var("GH_TOKEN", "x") };
        let (_d, p) = setup();
        clear_credentials(&p, "churn").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("token_env"), "{text}");
        assert!(
            text.contains("# --- the main model ---")
                && text.contains("name = \"churn\"      # short name")
        );
        remove(&p, "public").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("\"public\""), "{text}");
        assert!(text.starts_with("# Company mounts. Keep this file tidy!\nmount_root = \"/mnt/repos\"   # where they appear\n"));
    }

    #[test]
    fn invalid_edits_are_not_written() {
        unsafe { std::env::set_var("GH_TOKEN", "x") };
        let (_d, p) = setup();
        let bad = AddOptions {
            name: "bad name!".into(),
            provider: "git".into(),
            url: "https://h/x.git".into(),
            ..Default::default()
        };
        let e = add(&p, &bad).unwrap_err();
        assert!(e.contains("invalid") && e.contains("`name`"), "{e}");
        let dup = AddOptions {
            name: "churn".into(),
            provider: "git".into(),
            url: "https://h/x.git".into(),
            ..Default::default()
        };
        assert!(add(&p, &dup).unwrap_err().contains("already exists"));
        assert!(
            remove(&p, "nope")
                .unwrap_err()
                .contains("no repository named 'nope'")
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), COMMENTED);
    }

    #[test]
    fn list_never_shows_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let text = "mount_root = \"/m\"\n[[repository]]\nname = \"s\"\nprovider = \"git\"\nurl = \"https://h/s.git\"\ntoken = \"super-secret-value\"\n";
        let c = Config::parse(&dir.path().join("c.toml"), text, &|_| None).unwrap();
        let out = list(&c);
        assert!(
            out.contains("token (inline)") && !out.contains("super-secret-value"),
            "{out}"
        );
    }
}
