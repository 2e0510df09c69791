//! Building the S3 client for a repository, and turning its errors into
//! messages a user can act on (each names the bucket and what to change;
//! nothing secret and no control character from the server goes into one).

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;

use crate::config::{Config, RepoConfig, S3Credentials};
use crate::source::SourceError;

/// Builds the S3 client for an entry: credentials, region (configured or
/// detected from the bucket), endpoint and path style, timeouts, retries.
pub async fn client_for(repo: &RepoConfig, config: &Config) -> Result<(Client, String), String> {
    let cfg = repo.s3.as_ref().ok_or("not an S3 repository")?;
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.request_timeout)
        .build();
    let retry = aws_config::retry::RetryConfig::standard().with_max_attempts(config.max_attempts);
    let region = cfg.region.clone().unwrap_or_else(|| "us-east-1".into());
    let loader = |anonymous: bool| {
        let mut l = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts.clone())
            .retry_config(retry.clone())
            .region(aws_config::Region::new(region.clone()));
        if let Some(e) = &cfg.endpoint_url {
            l = l.endpoint_url(e);
        }
        if anonymous {
            return l.no_credentials();
        }
        match &cfg.credentials {
            S3Credentials::Anonymous => l.no_credentials(),
            S3Credentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => l.credentials_provider(aws_credential_types::Credentials::new(
                access_key_id.clone(),
                secret_access_key.expose().to_string(),
                session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "repofs-config",
            )),
            S3Credentials::Auto { profile: Some(p) } => l.profile_name(p),
            S3Credentials::Auto { profile: None } => l,
        }
    };
    let mut anonymous = matches!(cfg.credentials, S3Credentials::Anonymous);
    let mut sdk = loader(false).load().await;
    if matches!(cfg.credentials, S3Credentials::Auto { .. }) {
        use aws_credential_types::provider::ProvideCredentials;
        let found = match sdk.credentials_provider() {
            Some(p) => p.provide_credentials().await.is_ok(),
            None => false,
        };
        if !found {
            tracing::info!(repo = %repo.name, "no AWS credentials found: using unsigned requests (public bucket)");
            sdk = loader(true).load().await;
            anonymous = true;
        }
    }
    let build = |region: &str| {
        Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .region(aws_config::Region::new(region.to_string()))
                .force_path_style(cfg.force_path_style)
                .build(),
        )
    };
    let mut client = build(&region);
    if cfg.region.is_none() {
        // Ask the bucket where it lives (x-amz-bucket-region).
        let detected = match client.head_bucket().bucket(&cfg.bucket).send().await {
            Ok(out) => out.bucket_region().map(str::to_string),
            Err(e) => e
                .raw_response()
                .and_then(|r| r.headers().get("x-amz-bucket-region"))
                .map(str::to_string),
        };
        if let Some(r) = detected.filter(|r| *r != region) {
            tracing::info!(repo = %repo.name, region = %r, "bucket region detected");
            client = build(&r);
        }
    }
    let how = if anonymous { "unsigned" } else { "signed" };
    Ok((client, how.to_string()))
}

/// Turns an SDK error into a message a user can act on: it names the
/// bucket and what to change, and carries the errno to return (a missing
/// bucket or a wrong region is EIO, never ENOENT: see the module doc).
pub fn describe<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    bucket: &str,
    action: &str,
) -> SourceError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_s3::error::SdkError;
    // What the server said, without its control characters (log lines).
    let code = printable(e.code().unwrap_or(""), 64);
    let msg = printable(e.message().unwrap_or(""), 300);
    let (code, msg) = (code.as_str(), msg.as_str());
    let status = e.raw_response().map(|r| r.status().as_u16());
    let listing = action == "ListObjectsV2";
    let redirect = matches!(code, "PermanentRedirect" | "TemporaryRedirect")
        || (code.is_empty() && matches!(status, Some(301 | 307)));
    let region = bucket_region_hint(e);
    if redirect
        || (code == "AuthorizationHeaderMalformed" && (region.is_some() || msg.contains("region")))
    {
        let why = if code.is_empty() {
            format!("HTTP {}", status.unwrap_or(0))
        } else {
            code.to_string()
        };
        return SourceError::Unavailable(match region {
            Some(r) => format!(
                "bucket {bucket} is in region {r}, not the one requests were signed for ({why}): set `region = \"{r}\"` for it in the configuration (or remove `region` to detect it)"
            ),
            None => format!(
                "bucket {bucket} is in another region ({why}): set `region` for it in the configuration to the bucket's region (or remove `region` to detect it)"
            ),
        });
    }
    match (e, code) {
        (_, "AccessDenied") => SourceError::Denied(format!(
            "{action} on bucket {bucket} was denied (AccessDenied{}); the credentials need s3:{} on {}",
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            },
            if listing { "ListBucket" } else { "GetObject" },
            if listing {
                format!("arn:aws:s3:::{bucket}")
            } else {
                format!("arn:aws:s3:::{bucket}/*")
            }
        )),
        (_, "InvalidAccessKeyId") => SourceError::Denied(format!(
            "the access key id is not known to S3 (InvalidAccessKeyId): check access_key_id for bucket {bucket}"
        )),
        (_, "SignatureDoesNotMatch") => SourceError::Denied(format!(
            "the secret access key is wrong (SignatureDoesNotMatch) for bucket {bucket}"
        )),
        (_, "ExpiredToken") | (_, "TokenRefreshRequired") => SourceError::Denied(format!(
            "the session token has expired ({code}): get new temporary credentials for bucket {bucket}"
        )),
        // EIO, not ENOENT: a directory read that fails with ENOENT is an
        // empty directory to libc's readdir.
        (_, "NoSuchBucket") => SourceError::Unavailable(format!(
            "bucket {bucket} does not exist (NoSuchBucket): check `bucket` (and `endpoint_url`) of this repository in the configuration"
        )),
        (_, "NoSuchKey") => SourceError::NotFound(format!(
            "no such key in bucket {bucket} (deleted since it was listed?)"
        )),
        (_, "PreconditionFailed") => SourceError::Unavailable(format!(
            "the object in bucket {bucket} changed while it was being read (ETag no longer matches)"
        )),
        (SdkError::TimeoutError(_), _) => SourceError::Unavailable(format!(
            "{action} on bucket {bucket} timed out: check the network, or raise `request_timeout`"
        )),
        (SdkError::DispatchFailure(d), _) => SourceError::Unavailable(format!(
            "cannot reach S3 for bucket {bucket}: {}; check `endpoint_url` and the network",
            if d.is_timeout() {
                "timed out".to_string()
            } else {
                printable(&root_cause(e), 300)
            }
        )),
        (SdkError::ServiceError(se), _) => {
            let status = se.raw().status().as_u16();
            let mut text = format!("{action} on bucket {bucket}: HTTP {status}");
            for part in [code, msg].into_iter().filter(|p| !p.is_empty()) {
                text.push(' ');
                text.push_str(part);
            }
            match status {
                401 | 403 => SourceError::Denied(format!(
                    "{text}: check the credentials and the bucket policy"
                )),
                // A listing's 404 is the bucket (or the endpoint) missing.
                404 if listing => SourceError::Unavailable(format!(
                    "{text}: the bucket was not found; check `bucket` and `endpoint_url` in the configuration"
                )),
                404 => SourceError::NotFound(text),
                412 => SourceError::Unavailable(format!(
                    "the object in bucket {bucket} changed while it was being read (ETag no longer matches)"
                )),
                500..=599 => SourceError::Unavailable(format!(
                    "{text}: an error on the server's side; it is retried at the next access"
                )),
                _ => SourceError::Unavailable(text),
            }
        }
        (SdkError::ResponseError(_), _) => SourceError::Unavailable(format!(
            "{action} on bucket {bucket}: the answer could not be read ({}); is `endpoint_url` an S3 server?",
            printable(&root_cause(e), 300)
        )),
        _ => SourceError::Unavailable(format!(
            "{action} on bucket {bucket} failed: {}",
            printable(&root_cause(e), 300)
        )),
    }
}

/// `s` without control characters, at most `max` characters (text from the
/// server goes into log lines).
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The bucket's region, as an error answer names it: the
/// `x-amz-bucket-region` header, a `<Region>` in the error document
/// (AuthorizationHeaderMalformed), or "expecting 'r'" in its message.
/// Only a plausible region name is returned.
fn bucket_region_hint<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<String>
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
{
    let plausible = |r: &str| {
        let r = r.trim();
        (!r.is_empty()
            && r.len() <= 32
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        .then(|| r.to_string())
    };
    let raw = e.raw_response();
    if let Some(r) = raw
        .and_then(|r| r.headers().get("x-amz-bucket-region"))
        .and_then(plausible)
    {
        return Some(r);
    }
    let between = |text: &str, open: &str, close: &str| -> Option<String> {
        let start = text.find(open)? + open.len();
        let len = text.get(start..)?.find(close)?;
        plausible(text.get(start..start + len)?)
    };
    if let Some(r) = raw
        .and_then(|r| r.body().bytes())
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|body| between(body, "<Region>", "</Region>"))
    {
        return Some(r);
    }
    e.message().and_then(|m| between(m, "expecting '", "'"))
}

/// The innermost error's message (the useful part of a connector error).
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ListObjectsV2 error answer as the SDK hands it over.
    fn answer(
        status: u16,
        code: Option<&str>,
        message: Option<&str>,
        header_region: Option<&'static str>,
        body: &str,
    ) -> aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error,
        aws_sdk_s3::config::http::HttpResponse,
    > {
        let mut meta = aws_sdk_s3::error::ErrorMetadata::builder();
        if let Some(c) = code {
            meta = meta.code(c);
        }
        if let Some(m) = message {
            meta = meta.message(m);
        }
        let err = aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error::generic(meta.build());
        let mut raw = aws_sdk_s3::config::http::HttpResponse::new(
            status.try_into().unwrap(),
            aws_sdk_s3::primitives::SdkBody::from(body.to_string()),
        );
        if let Some(r) = header_region {
            raw.headers_mut().insert("x-amz-bucket-region", r);
        }
        aws_sdk_s3::error::SdkError::service_error(err, raw)
    }

    #[test]
    fn bucket_errors_are_eio_or_eacces_and_name_the_bucket_and_the_fix() {
        let missing = describe(
            &answer(
                404,
                Some("NoSuchBucket"),
                Some("The specified bucket does not exist"),
                None,
                "",
            ),
            "gone",
            "ListObjectsV2",
        );
        assert_eq!(missing.errno(), libc::EIO, "{missing}");
        let text = missing.to_string();
        assert!(
            text.contains("bucket gone does not exist") && text.contains("`bucket`"),
            "{text}"
        );

        // 404 without a code (HEAD-like answers) on a listing: the bucket.
        let bare = describe(&answer(404, None, None, None, ""), "gone", "ListObjectsV2");
        assert_eq!(bare.errno(), libc::EIO, "{bare}");

        // A redirect: the region from the header, or from the document.
        for e in [
            answer(
                301,
                Some("PermanentRedirect"),
                Some("must be addressed using the specified endpoint"),
                Some("eu-west-1"),
                "",
            ),
            answer(301, None, None, Some("eu-west-1"), ""),
            answer(
                400,
                Some("AuthorizationHeaderMalformed"),
                Some(
                    "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'",
                ),
                None,
                "<Error><Code>AuthorizationHeaderMalformed</Code><Region>eu-west-1</Region></Error>",
            ),
            answer(
                400,
                Some("AuthorizationHeaderMalformed"),
                Some("the region 'us-east-1' is wrong; expecting 'eu-west-1'"),
                None,
                "",
            ),
        ] {
            let d = describe(&e, "far", "ListObjectsV2");
            assert_eq!(d.errno(), libc::EIO, "{d}");
            let text = d.to_string();
            assert!(
                text.contains("bucket far is in region eu-west-1")
                    && text.contains("region = \"eu-west-1\""),
                "{text}"
            );
        }
        // No region to be found (or an implausible one): still says what to do.
        let unknown = describe(
            &answer(
                301,
                Some("PermanentRedirect"),
                None,
                Some("not a region; see ../x"),
                "<Region>../x</Region>",
            ),
            "far",
            "ListObjectsV2",
        );
        assert_eq!(unknown.errno(), libc::EIO);
        let text = unknown.to_string();
        assert!(
            text.contains("bucket far is in another region") && !text.contains('\n'),
            "{text}"
        );

        let denied = describe(
            &answer(403, Some("AccessDenied"), Some("Access Denied"), None, ""),
            "locked",
            "ListObjectsV2",
        );
        assert_eq!(denied.errno(), libc::EACCES);
        assert!(
            denied.to_string().contains("arn:aws:s3:::locked"),
            "{denied}"
        );

        // Whatever the server put in its message stays on one log line.
        let odd = describe(
            &answer(
                500,
                Some("Weird\nCode"),
                Some("line one\nline two\x1b[31m"),
                None,
                "",
            ),
            "b",
            "ListObjectsV2",
        );
        assert!(!odd.to_string().contains(['\n', '\x1b']), "{odd}");
    }
}
