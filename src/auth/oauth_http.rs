//! The OAuth token endpoint as repofs asks it (RFC 6749 §5, RFC 8628
//! §3.4-3.5): form POSTs with bounded retries, timeouts and a capped
//! answer, and the answer parsed into a token or an OAuth error. Nothing
//! here logs or returns the form (it holds refresh tokens and codes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most of a token endpoint's answer that is read.
const MAX_ANSWER: usize = 64 * 1024;
/// Attempts at a token request that failed on the network or with a 5xx.
const ATTEMPTS: u32 = 3;

/// An OAuth token endpoint's answer.
pub(crate) enum TokenAnswer {
    Token {
        access_token: String,
        refresh_token: Option<String>,
        expires_in: Option<u64>,
        scope: Option<String>,
    },
    /// RFC 6749 §5.2 (and RFC 8628 §3.5): `error` and its description.
    Error { error: String, description: String },
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The daemon's pooled client for token endpoints (no redirects: the
/// forms hold secrets).
pub(crate) fn http_client(
    timeout: Duration,
    ca_bundle: Option<std::path::PathBuf>,
) -> Result<reqwest::Client, String> {
    crate::fetch::http::client(crate::fetch::http::ClientOptions {
        connect_timeout: timeout,
        read_timeout: timeout,
        redirects: false,
        ca_bundle,
    })
}

/// A failed token request, and whether trying again may help.
struct FormError(String, bool);

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl crate::fetch::Retryable for FormError {
    fn retryable(&self) -> bool {
        self.1
    }
}

/// POSTs a form to `<gitlab>/oauth/<endpoint>` and reads the JSON answer
/// (at most [`MAX_ANSWER`] bytes). Network errors and 5xx are retried a
/// few times; the error never holds the form (it has secrets).
pub(crate) async fn post_form(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(u16, serde_json::Value), String> {
    crate::fetch::Policy::new(ATTEMPTS)
        .run(&format!("token request to {url}"), None, |_| async {
            post_once(client, url, form)
                .await
                .map_err(|(e, again)| FormError(e, again))
        })
        .await
        .map_err(|e| e.0)
}

async fn post_once(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(u16, serde_json::Value), (String, bool)> {
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut resp = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| (cause(e), true))?;
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|e| (cause(e), true))? {
        if bytes.len() + c.len() > MAX_ANSWER {
            return Err((format!("an answer larger than {MAX_ANSWER} bytes"), false));
        }
        bytes.extend_from_slice(&c);
    }
    if status >= 500 {
        return Err((format!("HTTP {status}"), true));
    }
    let json = serde_json::from_slice(&bytes).map_err(|_| {
        (
            format!("HTTP {status} with an answer that is not JSON"),
            false,
        )
    })?;
    Ok((status, json))
}

/// What went wrong on the network: the root cause, never the URL or body.
fn cause(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        return "no answer in time (timed out)".into();
    }
    let mut cause = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    cause
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Parses a token endpoint's answer (RFC 6749 §5.1 and §5.2).
pub(crate) fn token_answer(status: u16, v: &serde_json::Value) -> Result<TokenAnswer, String> {
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    if let Some(error) = text("error") {
        // Only printable characters of the description, and not much.
        let description: String = text("error_description")
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        return Ok(TokenAnswer::Error { error, description });
    }
    if status != 200 {
        return Err(format!("HTTP {status} without an OAuth error"));
    }
    let access_token = text("access_token").ok_or("the answer has no access_token")?;
    if access_token.is_empty() || !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the answer's access_token is empty or not printable".into());
    }
    let refresh_token = text("refresh_token");
    if refresh_token
        .as_deref()
        .is_some_and(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err("the answer's refresh_token is empty or not printable".into());
    }
    Ok(TokenAnswer::Token {
        access_token,
        refresh_token,
        expires_in: v.get("expires_in").and_then(|x| x.as_u64()),
        scope: text("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_parse_errors_and_tokens() {
        let v = serde_json::json!({"error": "slow_down", "error_description": "poll\nslower"});
        match token_answer(400, &v).unwrap() {
            TokenAnswer::Error { error, description } => {
                assert_eq!(error, "slow_down");
                assert_eq!(description, "pollslower");
            }
            _ => panic!(),
        }
        let v = serde_json::json!({"access_token": "a", "refresh_token": "r", "expires_in": 7200});
        assert!(matches!(
            token_answer(200, &v).unwrap(),
            TokenAnswer::Token {
                expires_in: Some(7200),
                ..
            }
        ));
        assert!(token_answer(200, &serde_json::json!({"access_token": "a b"})).is_err());
        assert!(token_answer(403, &serde_json::json!({})).is_err());
        assert_eq!(urlencode("a b&c=d:"), "a%20b%26c%3Dd%3A");
    }
}
