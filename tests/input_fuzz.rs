//! Property tests over what a user or an operator types: config files,
//! size and duration strings, repository URLs for every provider (in a
//! config entry and on the command line), GitHub App key files, and the
//! redaction of URLs for messages. Valid inputs are mutated with the
//! deterministic generator of `fuzz`; every case must return `Ok` or
//! `Err`, never panic (a panic fails the test and names the case's seed).

mod fuzz;

use std::path::Path;
use std::time::Duration;

use fuzz::*;
use repofs::config::{Config, Provider};

/// Config texts that parse (or fail validation late): every provider, the
/// top-level keys, S3 and GitHub App entries, sizes and durations.
fn config_seeds() -> Vec<Vec<u8>> {
    let example = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml"))
        .expect("config/example.toml");
    let mut seeds = vec![example];
    let top = "mount_root = \"/mnt/repos\"\ncache_dir = \"/tmp/repofs-fuzz-cache\"\ncache_size = \"20GiB\"\nrequest_timeout = \"30s\"\nconnect_timeout = \"500ms\"\nmax_attempts = 3\nmetrics_listen = \"127.0.0.1:9464\"\nallow_other = false\nfile_reads = \"auto\"\n";
    for (provider, url) in [
        ("github", "https://github.com/acme/churn-model"),
        ("github-enterprise", "git@ghe.acme.internal:acme/x.git"),
        ("gitlab", "https://gitlab.com/g/sub/p/-/tree/main"),
        ("gitlab-enterprise", "ssh://git@gl.acme:2222/g/p.git"),
        (
            "bitbucket-server",
            "https://bb.acme/ctx/projects/KEY/repos/slug/browse",
        ),
        ("git", "http://127.0.0.1:8080/x.git"),
    ] {
        seeds.push(
            format!(
                "{top}[[repository]]\nname = \"r-1\"\nprovider = \"{provider}\"\nurl = \"{url}\"\nref = \"main\"\nrefresh = \"5m\"\ntoken_env = \"GOOD\"\ndescription = \"d\"\n"
            )
            .into_bytes(),
        );
    }
    seeds.push(
        format!(
            "{top}[[repository]]\nname = \"data\"\nprovider = \"s3\"\nbucket = \"b\"\nprefix = \"p/\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9000\"\nmetadata_ttl = \"60s\"\ncredentials = \"anonymous\"\n\n[shared_cache]\nbucket = \"s\"\ntimeout = \"5s\"\n"
        )
        .into_bytes(),
    );
    seeds.push(
        format!(
            "{top}[[repository]]\nname = \"app\"\nprovider = \"github\"\nurl = \"https://github.com/a/b\"\ngithub_app = {{ app_id = 1, installation_id = 2, private_key_file = \"/nonexistent/app.pem\" }}\n"
        )
        .into_bytes(),
    );
    seeds
}

/// Tokens that sit on the config parser's decision points.
fn config_dict() -> Vec<Vec<u8>> {
    [
        "\"",
        "'",
        "=",
        "\n",
        "[[repository]]\n",
        "[shared_cache]\n",
        "{",
        "}",
        "https://",
        "http://",
        "s3://",
        "git@h:",
        "ssh://",
        "@",
        ":",
        "/",
        "//",
        "?",
        "#",
        ".git",
        "-",
        "0",
        "1e400",
        "18446744073709551616",
        "9223372036854775807",
        "-1",
        "8785h",
        "5124095576030431h",
        "307445734561825861m",
        "99999999999999999999ms",
        "0.0000001GiB",
        "16EiB",
        "99999999TB",
        "é",
        "\u{feff}",
        "\\u0000",
        "provider = \"s3\"\n",
        "provider = \"git\"\n",
        "url = \"https://\"\n",
        "url = \"http://:0\"\n",
        "mount_point = \"/\"\n",
        "mount_point = \"relative\"\n",
        "ref = \"\"\n",
        "refresh = \"never\"\n",
        "max_attempts = 4294967295\n",
        "name = \"..\"\n",
        "bucket = \"\"\n",
        "prefix = \"/\"\n",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect()
}

fn parse_config(text: &[u8]) -> Result<Config, String> {
    let text = String::from_utf8_lossy(text);
    Config::parse(Path::new("/fuzz/config.toml"), &text, &|v| {
        (v == "GOOD").then(|| "tok\n".to_string())
    })
    .map_err(|e| e.to_string())
}

#[test]
fn mutated_config_files_never_panic() {
    let seeds = config_seeds();
    let dict = config_dict();
    for s in &seeds {
        // The seeds themselves get as far as validation without panicking.
        let _ = guarded("config seed", 0, s, parse_config);
    }
    let mut accepted = 0;
    for i in 0..cases(4000) {
        let seed = case_seed(1, i);
        let mut rng = Rng::new(seed);
        let mut v = rng.pick(&seeds).clone();
        if rng.one_in(3) {
            // Line-level: drop, repeat, swap or add whole lines.
            let mut lines: Vec<Vec<u8>> = v.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            let roll = rng.below(4);
            reorder(&mut rng, &mut lines, roll, |r| r.pick(&dict).clone());
            v = lines.join(&b'\n');
        }
        mutate_bytes(&mut rng, &mut v, &dict);
        if guarded("Config::parse", seed, &v, parse_config).is_ok() {
            accepted += 1;
        }
    }
    // Not everything was refused at the first byte: mutations reached the
    // validation of entries too.
    assert!(accepted > 0, "no mutated config parsed at all");
}

/// Strings around the size and duration grammars.
fn value_dict() -> Vec<Vec<u8>> {
    [
        "0",
        "1",
        "9",
        ".",
        "..",
        "1.5",
        " ",
        "-",
        "+",
        "e",
        "e9",
        "ms",
        "s",
        "m",
        "min",
        "h",
        "B",
        "K",
        "KiB",
        "MiB",
        "GiB",
        "TiB",
        "KB",
        "MB",
        "GB",
        "TB",
        "PiB",
        "é",
        "١",
        "\u{0}",
        "18446744073709551615",
        "18446744073709551616",
        "5124095576030431",
        "99999999999999999999999",
        "1e308",
        "inf",
        "NaN",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect()
}

#[test]
fn size_and_duration_strings_never_panic() {
    use repofs::config::{parse_duration, parse_size};
    let seeds: Vec<Vec<u8>> = [
        "20GiB", "512 MB", "1.5G", "4096", "30s", "500ms", "5m", "1h", "8784h", "10min",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let dict = value_dict();
    for i in 0..cases(20000) {
        let seed = case_seed(2, i);
        let mut rng = Rng::new(seed);
        let mut v = rng.pick(&seeds).clone();
        mutate_bytes(&mut rng, &mut v, &dict);
        let text = String::from_utf8_lossy(&v).into_owned();
        let _ = guarded("parse_size", seed, &v, |_| parse_size(&text));
        let d = guarded("parse_duration", seed, &v, |_| parse_duration(&text));
        if let Ok(d) = d {
            // What the daemon then does with one: multiply it by the
            // largest `max_attempts` and add it to the clock.
            assert!(d <= Duration::from_secs(366 * 24 * 3600), "{text:?}: {d:?}");
            let _ = std::time::Instant::now() + d * 10;
        }
    }
}

/// URLs as users paste them, for every provider, and pieces to mutate them with.
const URL_SEEDS: &[&str] = &[
    "https://github.com/BurntSushi/ripgrep",
    "https://github.com/a/b/tree/main/src",
    "git@github.com:a/b.git",
    "https://gitlab.com/g/sub/proj/-/tree/main",
    "ssh://git@gitlab.acme:2222/g/p.git",
    "https://bb.acme/ctx/projects/KEY/repos/slug/browse",
    "https://bb.acme/users/NAME/repos/slug",
    "https://bb.acme/scm/key/slug.git",
    "http://127.0.0.1:8080/x.git",
    "https://",
    "https://h",
    "s3://bucket/prefix/",
    "s3://",
];

fn url_dict() -> Vec<Vec<u8>> {
    [
        "https://",
        "http://",
        "ssh://",
        "s3://",
        "git@",
        "@",
        ":",
        "::",
        "/",
        "//",
        "?",
        "#",
        "%",
        "%zz",
        "[",
        "]",
        "[::1]",
        ":99999",
        ".git",
        "-",
        "/-/",
        "scm",
        "projects",
        "users",
        "repos",
        "browse",
        "tree",
        "blob",
        "~",
        "é",
        "\u{0}",
        " ",
        "user:pw@",
        "?X-Amz-Signature=S",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect()
}

fn every_url_parser(url: &str) {
    use repofs::url_mount::{UrlArgs, config, infer_provider, name_from_url};
    let _ = infer_provider(url);
    let _ = name_from_url(url);
    let _ = repofs::redact::url(url);
    for (name, provider) in Provider::ALL {
        let _ = repofs::source::git::url::clone_url(*provider, url);
        // The command line (`repofs mount --provider P URL DIR`).
        let args = UrlArgs {
            provider: Some(name.to_string()),
            cache_dir: Some("/tmp/repofs-fuzz-cache".into()),
            ..Default::default()
        };
        let _ = config(url, Some(Path::new("/tmp/repofs-fuzz/m")), &args);
    }
    // And as a config entry (quoted as TOML would take it).
    for (name, _) in Provider::ALL {
        let text = format!(
            "mount_root = \"/m\"\n[[repository]]\nname = \"x\"\nprovider = \"{name}\"\nurl = {}\nbucket = \"b\"\n",
            toml_string(url)
        );
        let _ = parse_config(text.as_bytes());
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[test]
fn urls_for_every_provider_never_panic() {
    // The one a user met: `repofs mount --provider git https:// DIR`.
    for url in URL_SEEDS {
        guarded("URL seed", 0, url.as_bytes(), |_| every_url_parser(url));
    }
    let dict = url_dict();
    for i in 0..cases(1500) {
        let seed = case_seed(3, i);
        let mut rng = Rng::new(seed);
        let mut v = rng.pick(URL_SEEDS).as_bytes().to_vec();
        mutate_bytes(&mut rng, &mut v, &dict);
        let url = String::from_utf8_lossy(&v).into_owned();
        guarded("URL parsers", seed, &v, |_| every_url_parser(&url));
    }
}

#[test]
fn github_app_key_files_never_panic() {
    use repofs::auth::GithubApp;
    use repofs::auth::GithubAppConfig;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    let seeds: Vec<Vec<u8>> = [
        "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm\n-----END RSA PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIEFr\n-----END PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY----------END RSA PRIVATE KEY-----",
        // The markers sharing their dashes: nothing at all between them.
        "-----BEGIN RSA PRIVATE KEY-----END RSA PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\n-----END RSA PRIVATE KEY-----\n",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let dict: Vec<Vec<u8>> = [
        "-----",
        "-----BEGIN ",
        "-----END ",
        "RSA PRIVATE KEY",
        "PRIVATE KEY",
        "\n",
        "=",
        "==",
        "A",
        "/",
        "+",
        "é",
        "\r\n",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect();
    let cfg = GithubAppConfig {
        app_id: 1,
        installation_id: 2,
        private_key_file: key.clone(),
    };
    for i in 0..cases(3000) {
        let seed = case_seed(4, i);
        let mut rng = Rng::new(seed);
        let v = match seeds.get(i) {
            Some(s) => s.clone(),
            None => {
                let mut v = rng.pick(&seeds).clone();
                mutate_bytes(&mut rng, &mut v, &dict);
                v
            }
        };
        std::fs::write(&key, &v).unwrap();
        let r = guarded("GithubApp::new", seed, &v, |_| {
            GithubApp::new(
                &cfg,
                "http://127.0.0.1:1".into(),
                Duration::from_secs(1),
                None,
            )
        });
        // None of these is a usable key: each is refused, naming the file.
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("private key") && e.contains("app.pem"),
            "case seed {seed}: {e}"
        );
    }
}
