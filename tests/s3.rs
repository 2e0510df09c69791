//! End-to-end tests of S3 mounts against moto's S3 server on loopback:
//! S3's odd key semantics (control characters included), pagination, large
//! objects read sequentially and at random offsets, ETag-pinned reads,
//! metadata_ttl, missing buckets and wrong regions, and `repofs check`.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use common::*;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    s3: S3Server,
}

fn setup() -> Setup {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    Setup {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        s3: S3Server::start(),
    }
}

fn config(s: &Setup, entries: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "mount_root = \"{}\"\ncache_dir = \"{}\"\nrequest_timeout = \"5s\"\nmax_attempts = 2\n",
        s.dir.join("mnt").display(),
        s.dir.join("cache").display()
    );
    for (name, body) in entries {
        text.push_str(&format!(
            "[[repository]]\nname = \"{name}\"\nprovider = \"s3\"\nendpoint_url = \"{}\"\n{body}\n",
            s.s3.endpoint()
        ));
    }
    let path = s.dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn odd_keys_pagination_and_big_objects() {
    let s = setup();
    let long = format!(
        "long/{}/{}/{}/{}/f.txt",
        "a".repeat(240),
        "b".repeat(240),
        "c".repeat(240),
        "d".repeat(240)
    );
    assert!(long.len() > 960);
    s.s3.py(&format!(
        r#"
s3.create_bucket(Bucket='data')
keys = ['top.txt', 'a/b/c.txt', 'marker/', 'marker/in.txt', 'conflict', 'conflict/x.txt',
        'bad//double.txt', 'dots/./x', 'dots/../y', 'sp ace/ünï.txt', '{long}', 'toolong/' + 'x' * 300]
for k in keys:
    s3.put_object(Bucket='data', Key=k, Body=b'' if k.endswith('/') else k.encode(), ACL='public-read')
for i in range(1500):
    s3.put_object(Bucket='data', Key='many/k%05d' % i, Body=str(i).encode(), ACL='public-read')
big = hashlib.sha256(b'seed').digest() * (100 * 1024 * 1024 // 32)
s3.put_object(Bucket='data', Key='big.bin', Body=big, ACL='public-read')
"#
    ));
    let cfg = config(
        &s,
        &[("pub", "bucket = \"data\"\ncredentials = \"anonymous\"")],
    );
    let (code, out, err) = sh(
        &format!("{} --config {} check", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    let m = s.dir.join("mnt/pub");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));

    assert_eq!(
        names(&m),
        [
            "a", "bad", "big.bin", "conflict", "dots", "long", "many", "marker", "sp ace",
            "toolong", "top.txt"
        ]
    );
    assert!(
        std::fs::metadata(m.join("conflict")).unwrap().is_dir(),
        "a key beside a prefix: the directory wins"
    );
    assert_eq!(names(&m.join("conflict")), ["x.txt"]);
    assert_eq!(names(&m.join("marker")), ["in.txt"]);
    assert!(names(&m.join("bad")).is_empty() && names(&m.join("dots")).is_empty());
    assert!(names(&m.join("toolong")).is_empty());
    assert_eq!(
        std::fs::read_to_string(m.join("a/b/c.txt")).unwrap(),
        "a/b/c.txt"
    );
    assert_eq!(
        std::fs::read_to_string(m.join("sp ace/ünï.txt")).unwrap(),
        "sp ace/ünï.txt"
    );
    assert_eq!(std::fs::read_to_string(m.join(&long)).unwrap(), long);
    let many = names(&m.join("many"));
    assert_eq!(many.len(), 1500, "pagination lost keys");
    assert_eq!(
        std::fs::read_to_string(m.join("many/k01499")).unwrap(),
        "1499"
    );
    let log = d.log_text();
    for why in [
        "empty path segment",
        "`.` or `..`",
        "longer than 255",
        "a directory of the same name",
    ] {
        assert!(log.contains(why), "no warning for {why}:\n{log}");
    }

    // 100 MB: sequential and random reads compare with the source bytes.
    let block: Vec<u8> = {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys; sys.stdout.buffer.write(hashlib.sha256(b'seed').digest())",
            ])
            .output()
            .unwrap();
        out.stdout
    };
    let expect_at = |off: u64, len: usize| -> Vec<u8> {
        (0..len).map(|i| block[((off as usize) + i) % 32]).collect()
    };
    assert_eq!(
        std::fs::metadata(m.join("big.bin")).unwrap().len(),
        100 << 20
    );
    let mut f = std::fs::File::open(m.join("big.bin")).unwrap();
    for off in [77_777_777u64, 5, 50 << 20, (100 << 20) - 10] {
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut buf = vec![0u8; 10];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(buf, expect_at(off, 10), "random read at {off}");
    }
    let all = std::fs::read(m.join("big.bin")).unwrap();
    assert_eq!(all.len(), 100 << 20);
    assert!(
        all.chunks(32).all(|c| c == &block[..c.len()]),
        "sequential read differs"
    );
    d.stop();
}

#[test]
fn etag_pinning_ttl_and_credentials() {
    let s = setup();
    s.s3.py(r#"
s3.create_bucket(Bucket='live')
s3.put_object(Bucket='live', Key='dir/changing.txt', Body=b'version one')
s3.put_object(Bucket='live', Key='dir/big.bin', Body=b'A' * (80 * 1024 * 1024))
"#);
    let cfg = config(
        &s,
        &[(
            "keys",
            "bucket = \"live\"\nprefix = \"dir\"\naccess_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"s3cr3t-value\"\nsession_token = \"session-token-value\"\nmetadata_ttl = \"2s\"",
        )],
    );
    let m = s.dir.join("mnt/keys");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));
    assert_eq!(
        std::fs::read_to_string(m.join("changing.txt")).unwrap(),
        "version one"
    );

    // Replaced in the bucket: after metadata_ttl the mount shows the new object.
    s.s3.py("s3.put_object(Bucket='live', Key='dir/changing.txt', Body=b'version two, longer')");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(m.join("changing.txt")).unwrap() != "version two, longer" {
        assert!(
            std::time::Instant::now() < deadline,
            "the change never showed up"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Overwritten in the middle of a read: EIO, never a mix of two versions.
    // (80 MB: the ranges already requested when the object is replaced end
    // before 73 MB; the next one's If-Match fails.)
    let mut f = std::fs::File::open(m.join("big.bin")).unwrap();
    let mut first = vec![0u8; 1 << 20];
    f.read_exact(&mut first).unwrap();
    s.s3.py("s3.put_object(Bucket='live', Key='dir/big.bin', Body=b'B' * (80 * 1024 * 1024))");
    let mut rest = Vec::new();
    let err = f.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        rest.iter().all(|b| *b == b'A'),
        "bytes of the new version were mixed in"
    );
    let log = d.log_text();
    assert!(log.contains("changed while it was being read"), "{log}");
    assert!(
        !log.contains("s3cr3t-value") && !log.contains("session-token-value"),
        "a secret leaked"
    );
    d.stop();
}

#[test]
fn check_reports_missing_buckets_and_bad_config() {
    let s = setup();
    let cfg = config(
        &s,
        &[(
            "nobucket",
            "bucket = \"does-not-exist\"\ncredentials = \"anonymous\"",
        )],
    );
    let (code, out, _) = sh(
        &format!("{} --config {} check", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL nobucket") && out.contains("does not exist"),
        "{out}"
    );
    let cfg = config(&s, &[("bad", "bucket = \"x\"\naccess_key_id = \"AKID\"")]);
    let (code, _, err) = sh(
        &format!("{} --config {} check", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("repository 'bad'") && err.contains("secret"),
        "{err}"
    );
}

#[test]
fn denied_permissions_are_named_with_the_policy_to_add() {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start_with_iam(5);
    // Exactly five unauthenticated calls, then IAM is enforced.
    let keys = s3.py(
        r#"
import json
iam = boto3.client('iam', endpoint_url=s3.meta.endpoint_url, region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')
s3.create_bucket(Bucket='locked')
s3.put_object(Bucket='locked', Key='x.txt', Body=b'x')
iam.create_user(UserName='lister')
k = iam.create_access_key(UserName='lister')['AccessKey']
iam.put_user_policy(UserName='lister', PolicyName='list-only', PolicyDocument=json.dumps(
    {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 's3:ListBucket', 'Resource': 'arn:aws:s3:::locked'}]}))
print(k['AccessKeyId'], k['SecretAccessKey'])
"#,
    );
    let mut it = keys.split_whitespace();
    let (id, secret) = (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    );
    let s = Setup {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        s3,
    };
    let cfg = config(
        &s,
        &[
            (
                "lister",
                &format!(
                    "bucket = \"locked\"\naccess_key_id = \"{id}\"\nsecret_access_key = \"{secret}\""
                ),
            ),
            (
                "unknown",
                "bucket = \"locked\"\naccess_key_id = \"AKIAUNKNOWN\"\nsecret_access_key = \"whatever\"",
            ),
        ],
    );
    let (code, out, err) = sh(
        &format!("{} --config {} check", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}{err}");
    let lister = out.lines().find(|l| l.contains(" lister:")).unwrap();
    assert!(
        lister.starts_with("FAIL") && lister.contains("ListBucket works but reading objects fails"),
        "{out}"
    );
    assert!(
        lister.contains("s3:GetObject") && lister.contains("arn:aws:s3:::locked/*"),
        "{out}"
    );
    assert!(
        lister.contains("\"Action\":\"s3:ListBucket\""),
        "the minimal policy is printed: {out}"
    );
    let unknown = out.lines().find(|l| l.contains(" unknown:")).unwrap();
    assert!(
        unknown.starts_with("FAIL") && unknown.contains("InvalidAccessKeyId"),
        "{out}"
    );
    assert!(!out.contains(&secret), "a secret leaked");

    // Mounted with an unknown key: every access is EACCES. (With moto's
    // IAM mode the signed `delimiter=/` listings of a valid key fail moto's
    // own signature check, so the list-only key is exercised by `check`.)
    let mut d = Daemon::start(
        &cfg,
        &[s.dir.join("mnt/lister"), s.dir.join("mnt/unknown")],
        &s.dir.join("daemon.log"),
    );
    let e = std::fs::read_dir(s.dir.join("mnt/unknown"))
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    assert!(
        d.log_text().contains("InvalidAccessKeyId"),
        "{}",
        d.log_text()
    );
    d.stop();
}

#[test]
fn the_region_is_detected_from_the_bucket() {
    let s = setup();
    s.s3.py(
        r#"
eu = boto3.client('s3', endpoint_url=s3.meta.endpoint_url, region_name='eu-west-1', aws_access_key_id='test', aws_secret_access_key='test')
eu.create_bucket(Bucket='far-away', CreateBucketConfiguration={'LocationConstraint': 'eu-west-1'})
eu.put_object(Bucket='far-away', Key='hello.txt', Body=b'hello from eu-west-1')
"#,
    );
    let secret = s.dir.join("secret");
    std::fs::write(&secret, "test\n").unwrap();
    let cfg = config(
        &s,
        &[(
            "far",
            &format!(
                "bucket = \"far-away\"\naccess_key_id = \"test\"\nsecret_access_key_file = \"{}\"",
                secret.display()
            ),
        )],
    );
    let m = s.dir.join("mnt/far");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));
    assert_eq!(
        std::fs::read_to_string(m.join("hello.txt")).unwrap(),
        "hello from eu-west-1"
    );
    let log = d.log_text();
    assert!(
        log.contains("bucket region detected") && log.contains("eu-west-1"),
        "{log}"
    );
    d.stop();
}

/// Lines of the log that contain `text`.
fn count(log: &str, text: &str) -> usize {
    log.lines().filter(|l| l.contains(text)).count()
}

#[test]
fn control_characters_in_keys_are_names_and_nul_is_skipped() {
    let s = setup();
    // Without encoding-type=url these keys make S3's XML unreadable, and
    // the whole directory (siblings included) used to fail with EIO.
    s.s3.py(r#"
s3.create_bucket(Bucket='hostile')
keys = ['d/ok.txt', 'd/z-last.txt', 'd/a\x01b', 'd/nul\x00x', 'd/cr\rx', 'd/lf\nx', 'd/tab\tx',
        'd/sp ace+plus%25', 'd/sub\x01dir/f', 'd/nul\x00dir/g', 'top\x01.txt']
for k in keys:
    s3.put_object(Bucket='hostile', Key=k, Body=k.encode(), ACL='public-read')
"#);
    let cfg = config(
        &s,
        &[(
            "hostile",
            "bucket = \"hostile\"\ncredentials = \"anonymous\"\nmetadata_ttl = \"1s\"",
        )],
    );
    let m = s.dir.join("mnt/hostile");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));

    assert_eq!(names(&m), ["d", "top\x01.txt"]);
    let expected = [
        "a\x01b",
        "cr\rx",
        "lf\nx",
        "ok.txt",
        "sp ace+plus%25",
        "sub\x01dir",
        "tab\tx",
        "z-last.txt",
    ];
    let (code, out, err) = sh(
        &format!("ls -A {}", m.join("d").display()),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "ls failed: {out}{err}");
    assert!(
        out.contains("ok.txt") && out.contains("z-last.txt"),
        "{out}"
    );
    // Listed twice, the second time after metadata_ttl: still one warning
    // per skipped key.
    for round in 0..2 {
        assert_eq!(names(&m.join("d")), expected, "round {round}");
        std::thread::sleep(Duration::from_millis(1500));
    }
    for name in expected.iter().filter(|n| **n != "sub\x01dir") {
        let bytes = std::fs::read(m.join("d").join(name))
            .unwrap_or_else(|e| panic!("reading {name:?}: {e}"));
        assert_eq!(bytes, format!("d/{name}").as_bytes(), "{name:?}");
    }
    assert_eq!(
        std::fs::read(m.join("d/sub\x01dir/f")).unwrap(),
        b"d/sub\x01dir/f"
    );
    assert_eq!(
        std::fs::read(m.join("top\x01.txt")).unwrap(),
        b"top\x01.txt"
    );

    let log = d.log_text();
    assert_eq!(count(&log, "a NUL byte in the key"), 2, "{log}");
    // Keys are escaped in the log (a newline in a key cannot forge a line).
    assert_eq!(count(&log, r#"key="d/nul\0x""#), 1, "{log}");
    assert_eq!(count(&log, r#"key="d/nul\0dir/""#), 1, "{log}");
    assert!(!log.contains("ListObjectsV2 on bucket hostile"), "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
    // `repofs check` lists the same way.
    let (code, out, err) = sh(
        &format!("{} --config {} check", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok"), "{out}");
    d.stop();
}

#[test]
fn name_filter_skips_every_spelling_of_dot_git() {
    let s = setup();
    // The spellings git refuses in a tree: any case, the NTFS short name
    // and trailing dots/spaces, an HFS+ ignorable code point; as
    // directories (common prefixes) and as a file.
    s.s3.py(r#"
s3.create_bucket(Bucket='dotgit')
keys = ['.git/config', '.GIT/x', 'git~1/y', '.git. ./z', '.g\u200cit', 'normal.txt']
for k in keys:
    s3.put_object(Bucket='dotgit', Key=k, Body=k.encode(), ACL='public-read')
"#);
    let cfg = config(
        &s,
        &[(
            "dotgit",
            "bucket = \"dotgit\"\ncredentials = \"anonymous\"\nmetadata_ttl = \"1s\"",
        )],
    );
    let m = s.dir.join("mnt/dotgit");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));
    // Listed twice, the second time after metadata_ttl: one warning per
    // skipped name all the same.
    for round in 0..2 {
        assert_eq!(names(&m), ["normal.txt"], "round {round}");
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!(std::fs::read(m.join("normal.txt")).unwrap(), b"normal.txt");
    for path in [
        ".git/config",
        ".GIT/x",
        "git~1/y",
        ".git. ./z",
        ".g\u{200c}it",
    ] {
        let e = std::fs::read(m.join(path)).expect_err(path);
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{path}: {e}");
    }
    let log = d.log_text();
    assert_eq!(count(&log, "a spelling of `.git`"), 5, "{log}");
    d.stop();
}

#[test]
fn a_missing_bucket_is_an_error_not_an_empty_directory() {
    let s = setup();
    s.s3.py("s3.create_bucket(Bucket='present')\ns3.put_object(Bucket='present', Key='hello.txt', Body=b'hello', ACL='public-read')");
    let cfg = config(
        &s,
        &[
            (
                "gone",
                "bucket = \"no-such-bucket\"\ncredentials = \"anonymous\"",
            ),
            ("here", "bucket = \"present\"\ncredentials = \"anonymous\""),
        ],
    );
    let (code, out, err) = sh(
        &format!("{} --config {} check", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}{err}");
    let gone = out.lines().find(|l| l.contains(" gone:")).unwrap();
    assert!(
        gone.starts_with("FAIL")
            && gone.contains("no-such-bucket")
            && gone.contains("does not exist"),
        "{out}"
    );
    let here = out.lines().find(|l| l.contains(" here:")).unwrap();
    assert!(here.starts_with("ok"), "{out}");

    let (gm, hm) = (s.dir.join("mnt/gone"), s.dir.join("mnt/here"));
    let mut d = Daemon::start(&cfg, &[gm.clone(), hm.clone()], &s.dir.join("daemon.log"));
    // Not an empty directory: ls fails, and so does every read of the root.
    let (code, out, err) = sh(&format!("ls {}", gm.display()), Duration::from_secs(30));
    assert_ne!(code, 0, "ls of a missing bucket succeeded: {out:?}");
    assert!(err.contains("Input/output error"), "{err}");
    let e = std::fs::read_dir(&gm)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = std::fs::metadata(gm.join("anything")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("no-such-bucket")
            && l.contains("does not exist")
            && l.contains("`bucket`")),
        "{log}"
    );
    // The other repository of the same configuration is unaffected.
    assert_eq!(
        std::fs::read_to_string(hm.join("hello.txt")).unwrap(),
        "hello"
    );
    // `repofs status` names the failure (it is refreshed every 10 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out, _) = sh(
            &format!("{} --config {} status", repofs_bin(), cfg.display()),
            Duration::from_secs(10),
        );
        if out.contains("last error") && out.contains("does not exist") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed the error:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    d.stop();
}

#[test]
fn a_bucket_in_another_region_names_its_region() {
    let s = setup();
    // The test server answers a request signed for the wrong region as S3
    // does: 301 PermanentRedirect with x-amz-bucket-region.
    s.s3.py(
        r#"
eu = boto3.client('s3', endpoint_url=s3.meta.endpoint_url, region_name='eu-west-1', aws_access_key_id='test', aws_secret_access_key='test')
eu.create_bucket(Bucket='far-away', CreateBucketConfiguration={'LocationConstraint': 'eu-west-1'})
eu.put_object(Bucket='far-away', Key='hello.txt', Body=b'hello from eu-west-1')
"#,
    );
    let keys = "access_key_id = \"test\"\nsecret_access_key = \"s3cr3t-value\"";
    let cfg = config(
        &s,
        &[
            (
                "wrong",
                &format!("bucket = \"far-away\"\nregion = \"us-east-1\"\n{keys}"),
            ),
            ("detected", &format!("bucket = \"far-away\"\n{keys}")),
        ],
    );
    let (code, out, err) = sh(
        &format!("{} --config {} check", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}{err}");
    let wrong = out.lines().find(|l| l.contains(" wrong:")).unwrap();
    assert!(
        wrong.starts_with("FAIL") && wrong.contains("region = \"eu-west-1\""),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains(" detected:")),
        "{out}"
    );

    let (wm, dm) = (s.dir.join("mnt/wrong"), s.dir.join("mnt/detected"));
    let mut d = Daemon::start(&cfg, &[wm.clone(), dm.clone()], &s.dir.join("daemon.log"));
    let e = std::fs::read_dir(&wm)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(
        std::fs::read_to_string(dm.join("hello.txt")).unwrap(),
        "hello from eu-west-1"
    );
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("bucket far-away is in region eu-west-1")
            && l.contains("region = \"eu-west-1\"")),
        "{log}"
    );
    assert!(
        !log.contains("s3cr3t-value") && !out.contains("s3cr3t-value"),
        "a secret leaked"
    );
    d.stop();
}

/// The cache's disk is smaller than the bucket: every object still reads
/// right (from the network when the disk cannot take it), and no temp file
/// is left behind.
#[test]
fn objects_read_right_on_a_full_disk() {
    let s = setup();
    s.s3.py(r#"
import hashlib
s3.create_bucket(Bucket='fill')
for i in range(6):
    data = hashlib.sha256(str(i).encode()).digest() * (5 * 1024 * 1024 // 32)
    s3.put_object(Bucket='fill', Key='d/o%d.bin' % i, Body=data, ACL='public-read')
"#);
    let _disk = Tmpfs::mount(&s.dir.join("cache"), "12m");
    let cfg = config(
        &s,
        &[("fill", "bucket = \"fill\"\ncredentials = \"anonymous\"")],
    );
    let m = s.dir.join("mnt/fill");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));
    // Each object is one sha256 repeated: the same as the script above.
    let want = |i: u32| -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(i.to_string().as_bytes()).repeat(5 * 1024 * 1024 / 32)
    };
    for round in 0..2 {
        for i in 0..6u32 {
            let got = std::fs::read(m.join(format!("d/o{i}.bin")))
                .unwrap_or_else(|e| panic!("round {round}: o{i}: {e}\n{}", d.log_text()));
            assert!(
                got == want(i),
                "round {round}: o{i}: wrong bytes ({} read)",
                got.len()
            );
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.join("cache/content/tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    d.stop();
}

/// A reload (SIGHUP) that adds an S3 repository mounts it: building its
/// client blocks on the runtime, which once panicked inside the signal loop
/// and took every mount down.
#[test]
fn a_reload_adds_a_bucket() {
    let s = setup();
    s.s3.py(r#"
s3.create_bucket(Bucket='one')
s3.put_object(Bucket='one', Key='a.txt', Body=b'first')
s3.create_bucket(Bucket='two')
s3.put_object(Bucket='two', Key='b.txt', Body=b'second')
"#);
    let cfg = config(
        &s,
        &[(
            "one",
            "bucket = \"one\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"",
        )],
    );
    let (m1, m2) = (s.dir.join("mnt/one"), s.dir.join("mnt/two"));
    let mut d = Daemon::start(&cfg, &[m1.clone()], &s.dir.join("daemon.log"));
    config(
        &s,
        &[
            (
                "one",
                "bucket = \"one\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"",
            ),
            (
                "two",
                "bucket = \"two\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"",
            ),
        ],
    );
    d.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !is_mounted(&m2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the added bucket was not mounted:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(m2.join("b.txt")).unwrap(), "second");
    assert_eq!(std::fs::read_to_string(m1.join("a.txt")).unwrap(), "first");
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    d.stop();
}
