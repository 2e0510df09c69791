use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/repofs/config.toml"), text, &|v| {
        (v == "GOOD_TOKEN").then(|| "tok123\n".to_string())
    })
}

const BASE: &str = "mount_root = \"/mnt/repos\"\ncache_dir = \"/tmp/c\"\n";

#[test]
fn full_config_parses() {
    let c = parse(&format!(
        "{BASE}cache_size = \"2GiB\"\nallow_other = true\n\
         [[repository]]\nname = \"a\"\nprovider = \"github\"\nurl = \"https://github.com/acme/a\"\nref = \"main\"\ntoken_env = \"GOOD_TOKEN\"\ndescription = \"x\"\n\
         [[repository]]\nname = \"b.c_d-e\"\nprovider = \"git\"\nurl = \"http://127.0.0.1:1/b.git\"\nmount_point = \"/srv/b\"\n"
    ))
    .unwrap();
    assert_eq!(c.cache_size, 2 << 30);
    assert!(c.allow_other);
    assert_eq!(c.repositories.len(), 2);
    let a = &c.repositories[0];
    assert_eq!(a.mount_point, PathBuf::from("/mnt/repos/a"));
    assert_eq!(a.token.as_ref().unwrap().secret.expose(), "tok123");
    assert_eq!(c.repositories[1].mount_point, PathBuf::from("/srv/b"));
    assert_eq!(c.request_timeout, Duration::from_secs(30));
}

#[test]
fn unknown_key_names_repository_and_key() {
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"churn\"\nprovider = \"git\"\nurl = \"http://h/r\"\ntokn = \"x\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("/etc/repofs/config.toml"), "{e}");
    assert!(e.contains("repository 'churn'"), "{e}");
    assert!(e.contains("`tokn`"), "{e}");
    assert!(e.contains("did you mean `token`"), "{e}");
}

#[test]
fn unknown_top_level_key() {
    let e = parse(&format!("{BASE}cache_sise = \"1GiB\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`cache_sise`") && e.contains("cache_size"),
        "{e}"
    );
}

#[test]
fn missing_url_and_duplicate_names() {
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("repository 'x'") && e.contains("`url`"), "{e}");
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\n\
         [[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/b\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unique"), "{e}");
}

#[test]
fn nested_mount_points_are_refused() {
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"a\"\nprovider = \"git\"\nurl = \"http://h/a\"\nmount_point = \"/srv/a\"\n\
         [[repository]]\nname = \"b\"\nprovider = \"git\"\nurl = \"http://h/b\"\nmount_point = \"/srv/a/b\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("repository 'b'") && e.contains("nested"), "{e}");
    // Siblings with a common prefix in their names are fine.
    parse(&format!(
        "{BASE}[[repository]]\nname = \"a\"\nprovider = \"git\"\nurl = \"http://h/a\"\nmount_point = \"/srv/a\"\n\
         [[repository]]\nname = \"b\"\nprovider = \"git\"\nurl = \"http://h/b\"\nmount_point = \"/srv/ab\"\n"
    ))
    .unwrap();
}

#[test]
fn bad_values() {
    let e = parse(&format!("{BASE}cache_size = \"12 parsecs\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`cache_size`"), "{e}");
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"../x\"\nprovider = \"git\"\nurl = \"http://h/a\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`name`"), "{e}");
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"x\"\nprovider = \"svn\"\nurl = \"http://h/a\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown provider 'svn'"), "{e}");
    let e = parse("cache_dir = \"/x\"\n").unwrap_err().to_string();
    assert!(e.contains("mount_root"), "{e}");
    let e = parse("mount_root = [\n").unwrap_err().to_string();
    assert!(e.contains("not valid TOML"), "{e}");
}

#[test]
fn token_sources() {
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\ntoken_file = \"/nonexistent/tok\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`token_file`") && e.contains("/nonexistent/tok"),
        "{e}"
    );
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\ntoken_env = \"MISSING_VAR\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("MISSING_VAR"), "{e}");
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\ntoken = \"a\"\ntoken_env = \"GOOD_TOKEN\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("only one"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tok");
    std::fs::write(&f, "s3cr3t\n").unwrap();
    let c = parse(&format!(
        "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\ntoken_file = \"{}\"\n",
        f.display()
    ))
    .unwrap();
    let t = c.repositories[0].token.as_ref().unwrap();
    assert_eq!(t.secret.expose(), "s3cr3t");
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../config/example.toml");
    // Token files do not exist here: swap them for inline tokens.
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("token_file") {
                "token = \"t\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(Path::new("example.toml"), &text, &|v| {
        (v == "GHE_TOKEN").then(|| "t".to_string())
    })
    .unwrap();
    assert_eq!(c.repositories.len(), 7);
    for (name, _) in Provider::ALL {
        assert!(
            c.repositories.iter().any(|r| r.provider.as_str() == *name),
            "example lacks provider {name}"
        );
    }
}

#[test]
fn refresh_defaults_and_values() {
    let repo = |extra: &str| {
        parse(&format!(
            "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\n{extra}\n"
        ))
    };
    assert_eq!(
        repo("").unwrap().repositories[0].refresh,
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        repo("refresh = \"never\"").unwrap().repositories[0].refresh,
        None
    );
    assert_eq!(
        repo("refresh = \"30s\"").unwrap().repositories[0].refresh,
        Some(Duration::from_secs(30))
    );
    let pinned = "ref = \"0123456789abcdef0123456789abcdef01234567\"";
    assert_eq!(repo(pinned).unwrap().repositories[0].refresh, None);
    let e = repo(&format!("{pinned}\nrefresh = \"5m\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`refresh`") && e.contains("commit id"), "{e}");
    let e = repo("refresh = \"often\"").unwrap_err().to_string();
    assert!(e.contains("`refresh`") && e.contains("never"), "{e}");
}

#[test]
fn s3_entries() {
    let s3 = |extra: &str| {
        parse(&format!(
            "{BASE}[[repository]]\nname = \"d\"\nprovider = \"s3\"\nbucket = \"b\"\n{extra}\n"
        ))
    };
    let c = s3("prefix = \"/data\"").unwrap();
    let cfg = c.repositories[0].s3.as_ref().unwrap();
    assert_eq!(cfg.prefix, "data/");
    assert_eq!(cfg.metadata_ttl, Duration::from_secs(60));
    assert!(matches!(
        cfg.credentials,
        S3Credentials::Auto { profile: None }
    ));
    assert!(!cfg.force_path_style);
    let c = s3("endpoint_url = \"http://127.0.0.1:9000\"\ncredentials = \"anonymous\"").unwrap();
    let cfg = c.repositories[0].s3.as_ref().unwrap();
    assert!(cfg.force_path_style && cfg.credentials == S3Credentials::Anonymous);
    let c =
        s3("access_key_id = \"AK\"\nsecret_access_key = \"SK\"\nsession_token = \"ST\"").unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("\"SK\"") && !shown.contains("\"ST\""),
        "{shown}"
    );
    for (extra, key) in [
        ("access_key_id = \"AK\"", "secret"),
        ("secret_access_key = \"SK\"", "access_key_id"),
        (
            "credentials = \"anonymous\"\naccess_key_id = \"A\"\nsecret_access_key = \"S\"",
            "anonymous",
        ),
        ("session_token = \"T\"", "session_token"),
        ("url = \"https://x\"", "`url`"),
        ("metadata_ttl = \"soon\"", "metadata_ttl"),
        ("credentials = \"maybe\"", "credentials"),
    ] {
        let e = s3(extra).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"g\"\nprovider = \"git\"\nurl = \"http://h/a\"\nbucket = \"b\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`bucket`") && e.contains("s3"), "{e}");
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"d\"\nprovider = \"s3\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`bucket`"), "{e}");
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
    assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
    assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("").is_err());
    assert!(parse_size("-1G").is_err());
    assert!(parse_size("0").is_err());
    assert!(parse_size("5 furlongs").is_err());
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("soon").is_err());
    // Large enough to overflow `n * 3600`, u64 itself, or a timeout times
    // `max_attempts`: a clear error, never a panic or a wrapped value.
    assert_eq!(
        parse_duration("8784h").unwrap(),
        super::values::MAX_DURATION
    );
    for huge in [
        "8785h",
        "5124095576030431h",
        "307445734561825861m",
        "18446744073709551615s",
        "18446744073709551616s",
        "99999999999999999999999999ms",
        "18446744073709551615ms",
    ] {
        let e = parse_duration(huge).unwrap_err();
        assert!(e.contains("too long"), "{huge}: {e}");
    }
    let e = Config::parse(
        Path::new("c.toml"),
        "mount_root = \"/m\"\nrequest_timeout = \"5124095576030431h\"\nmax_attempts = 10\n",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`request_timeout`") && e.contains("too long"),
        "{e}"
    );
}

#[test]
fn lfs_url_is_an_http_url_without_credentials() {
    let entry = |v: &str| {
        parse(&format!(
            "{BASE}[[repository]]\nname = \"r\"\nprovider = \"git\"\nurl = \"https://h/r.git\"\nlfs_url = \"{v}\"\n"
        ))
    };
    let c = entry("https://lfs.example/org/r/").unwrap();
    assert_eq!(
        c.repositories[0].lfs_url.as_deref(),
        Some("https://lfs.example/org/r")
    );
    for bad in [
        "ftp://lfs.example/r",
        "not a url",
        "https://u:p@lfs.example/r",
        "https://",
    ] {
        let e = entry(bad).unwrap_err().to_string();
        assert!(e.contains("`lfs_url`"), "{bad}: {e}");
    }
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"s\"\nprovider = \"s3\"\nbucket = \"b\"\nlfs_url = \"https://x/y\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`lfs_url`"), "{e}");
}

#[test]
fn api_url_per_host_kind() {
    let entry = |provider: &str, url: &str, v: &str| {
        parse(&format!(
            "{BASE}[[repository]]\nname = \"r\"\nprovider = \"{provider}\"\nurl = \"{url}\"\napi_url = \"{v}\"\n"
        ))
    };
    for (provider, url, api) in [
        (
            "github-enterprise",
            "https://octo.ghe.com/a/b",
            "https://api.octo.ghe.com",
        ),
        ("github", "https://github.com/a/b", "https://api.github.com"),
        (
            "gitlab-enterprise",
            "https://h/gitlab/g/p",
            "https://h/gitlab/api/v4",
        ),
        (
            "bitbucket-server",
            "https://h/bb/scm/p/r.git",
            "http://h:7990/bb/rest/api/1.0",
        ),
    ] {
        let c = entry(provider, url, &format!("{api}/")).unwrap();
        assert_eq!(
            c.repositories[0].api_url.as_deref(),
            Some(api),
            "{provider}"
        );
    }
    let none = parse(&format!(
        "{BASE}[[repository]]\nname = \"r\"\nprovider = \"gitlab\"\nurl = \"https://h/g/p\"\n"
    ))
    .unwrap();
    assert_eq!(none.repositories[0].api_url, None);
    for (provider, url, bad, says) in [
        (
            "github",
            "https://github.com/a/b",
            "ftp://api.github.com",
            "http",
        ),
        (
            "github",
            "https://github.com/a/b",
            "https://u:p@api.github.com",
            "credentials",
        ),
        (
            "github",
            "https://github.com/a/b",
            "https://api.github.com/?x=1",
            "query",
        ),
        (
            "github",
            "https://github.com/a/b",
            "api.github.com",
            "not a URL",
        ),
        (
            "gitlab",
            "https://h/gitlab/g/p",
            "https://h/gitlab",
            "/api/v4",
        ),
        (
            "gitlab",
            "https://h/other/g/p",
            "https://h/gitlab/api/v4",
            "not a project under",
        ),
        ("git", "https://h/r.git", "https://h/api", "no host API"),
    ] {
        let e = entry(provider, url, bad).unwrap_err().to_string();
        assert!(e.contains("`api_url`") && e.contains(says), "{bad}: {e}");
        assert!(!e.contains("u:p"), "{e}");
    }
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"s\"\nprovider = \"s3\"\nbucket = \"b\"\napi_url = \"https://x/y\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`api_url`"), "{e}");
}

#[test]
fn only_the_secrets_a_command_needs_are_resolved() {
    let text = format!(
        "{BASE}[[repository]]\nname = \"a\"\nprovider = \"git\"\nurl = \"https://h/a.git\"\ntoken_env = \"UNSET_VAR\"\n\
         [[repository]]\nname = \"b\"\nprovider = \"git\"\nurl = \"https://h/b.git\"\ntoken_file = \"/nonexistent/token\"\n\
         [[repository]]\nname = \"c\"\nprovider = \"git\"\nurl = \"https://h/c.git\"\ntoken_env = \"GOOD_TOKEN\"\n"
    );
    let path = Path::new("/etc/repofs/config.toml");
    let env = |v: &str| (v == "GOOD_TOKEN").then(|| "tok123".to_string());
    let e = Config::parse(path, &text, &env).unwrap_err().to_string();
    assert!(e.contains("UNSET_VAR is not set"), "{e}");
    // No secret: every entry loads, and says where its secret lives.
    let c = Config::parse_with(path, &text, &env, &Secrets::None).unwrap();
    let origins: Vec<&str> = c
        .repositories
        .iter()
        .map(|r| r.token.as_ref().unwrap().origin.as_str())
        .collect();
    assert_eq!(
        origins,
        [
            "token_env UNSET_VAR",
            "token_file /nonexistent/token",
            "token_env GOOD_TOKEN"
        ]
    );
    assert!(
        c.repositories
            .iter()
            .all(|r| r.token.as_ref().unwrap().secret.expose().is_empty())
    );
    // One repository's: only its own.
    let c = Config::parse_with(path, &text, &env, &Secrets::Only(vec!["c".into()])).unwrap();
    assert_eq!(
        c.repositories[2].token.as_ref().unwrap().secret.expose(),
        "tok123"
    );
    let e = Config::parse_with(path, &text, &env, &Secrets::Only(vec!["b".into()]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/token"), "{e}");
}

#[test]
fn checkout_filters_default_to_what_git_clone_does() {
    let entry = |extra: &str| {
        parse(&format!(
            "{BASE}[[repository]]\nname = \"r\"\nprovider = \"git\"\nurl = \"https://h/r.git\"\n{extra}"
        ))
    };
    assert!(entry("").unwrap().repositories[0].checkout_filters);
    assert!(!entry("checkout_filters = false\n").unwrap().repositories[0].checkout_filters);
    let e = entry("checkout_filters = \"no\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkout_filters"), "{e}");
    let e = parse(&format!(
        "{BASE}[[repository]]\nname = \"s\"\nprovider = \"s3\"\nbucket = \"b\"\ncheckout_filters = true\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`checkout_filters`"), "{e}");
}
