//! The one HTTP GET of a trigger's `source.url` (Argo `URLArtifact`), made
//! while the config loads.
//!
//! Guarantees:
//! - **bounded in time**: the connection must be made within
//!   [`FetchLimits::connect_timeout`] and the whole answer (headers and
//!   body, redirects included) must arrive within [`FetchLimits::timeout`];
//! - **bounded in size**: a `Content-Length` over
//!   [`MAX_RESOURCE_FILE`](super::artifact::MAX_RESOURCE_FILE) is refused
//!   before the body is read, and a body without one is cut off as soon as
//!   it passes the cap, so a lying or endless server costs at most that
//!   much memory;
//! - only a `2xx` answer is a resource (after at most 10 redirects); any
//!   other status is an error that names it;
//! - `http://` and `https://` only. `https` checks the server's
//!   certificate against the system's roots unless the caller says not to
//!   (`verifyCert: false`).
//!
//! The fetch runs on a thread of its own with a current-thread tokio
//! runtime, so the loader (synchronous) may be called from plain code
//! (`spillway validate`, `spillway run` before its runtime starts) and from
//! inside a runtime (a SIGHUP reload, tests) alike.
//!
//! A `user:password@` in the URL is sent as basic auth (Argo's
//! `URLArtifact` has no other way to carry credentials); messages show the
//! URL with the password replaced by `***` ([`shown`]).
//!
//! Not done: retries. A start-up that cannot fetch fails and says why; the
//! operator (or the service manager) tries again.

use super::artifact::MAX_RESOURCE_FILE;
use std::time::Duration;

/// How long a `source.url` fetch may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// To open the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// For the whole answer, body included.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    /// 5 s to connect, 30 s in all: a resource is a few KiB, and a config
    /// that waits longer than that for one is better told why it failed.
    fn default() -> Self {
        FetchLimits {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why a `source.url` gave no resource.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not a URL: {0}")]
    BadUrl(String),
    #[error("scheme `{0}` is not fetched; use http:// or https://")]
    Scheme(String),
    #[error("cannot connect: {0}")]
    Unreachable(String),
    #[error(
        "no complete answer in time (at most {} to connect, {} in all)",
        humantime::format_duration(*connect),
        humantime::format_duration(*total)
    )]
    Timeout { connect: Duration, total: Duration },
    #[error("the server answered {0}; only a 2xx answer is a resource")]
    Status(reqwest::StatusCode),
    #[error(
        "the server announced {0} bytes, more than a resource may be ({MAX_RESOURCE_FILE} bytes)"
    )]
    TooLarge(u64),
    #[error("the answer is longer than a resource may be ({MAX_RESOURCE_FILE} bytes)")]
    TooLong,
    #[error("the answer is not UTF-8 text, so not YAML or JSON")]
    NotText,
    #[error("{0}")]
    Request(String),
    #[error("cannot start the fetch: {0}")]
    Start(std::io::Error),
}

/// Redirects followed before the fetch fails (reqwest's default too).
const MAX_REDIRECTS: usize = 10;

/// The text served at `url`, within `limits` (see the module docs).
/// `verify_cert: false` accepts any certificate from an `https` server.
pub fn fetch(url: &str, verify_cert: bool, limits: FetchLimits) -> Result<String, FetchError> {
    let parsed = reqwest::Url::parse(url).map_err(|err| FetchError::BadUrl(err.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FetchError::Scheme(parsed.scheme().to_string()));
    }
    std::thread::scope(|scope| {
        let fetching = std::thread::Builder::new()
            .name("spillway-fetch".to_string())
            .spawn_scoped(scope, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(FetchError::Start)?;
                let fetched = runtime.block_on(get(parsed, verify_cert, limits));
                // A name lookup still running on a blocking thread after a
                // timeout must not hold start-up: leave it behind.
                runtime.shutdown_background();
                fetched
            })
            .map_err(FetchError::Start)?;
        fetching
            .join()
            .unwrap_or_else(|_| Err(FetchError::Request("the fetch thread panicked".to_string())))
    })
}

/// `url` as shown in messages: the two places a URL carries credentials,
/// the user-info (`user:password@`) and the query string (presigned URLs,
/// `?token=`), are replaced by `***` — also in a URL that does not parse.
pub fn shown(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((before, _)) => (before, "?***"),
        None => (url, ""),
    };
    let (scheme, rest) = match before_query.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), before_query),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    format!("{scheme}{authority}{path}{query}")
}

async fn get(
    url: reqwest::Url,
    verify_cert: bool,
    limits: FetchLimits,
) -> Result<String, FetchError> {
    crate::install_tls_provider();
    let failed = |err: reqwest::Error| {
        // The caller names the URL (with its password hidden).
        let err = err.without_url();
        if err.is_timeout() {
            FetchError::Timeout {
                connect: limits.connect_timeout,
                total: limits.timeout,
            }
        } else if err.is_connect() {
            FetchError::Unreachable(crate::triggers::error_chain(&err))
        } else {
            FetchError::Request(crate::triggers::error_chain(&err))
        }
    };
    let client = reqwest::Client::builder()
        .connect_timeout(limits.connect_timeout)
        .timeout(limits.timeout)
        .danger_accept_invalid_certs(!verify_cert)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                attempt.error("refusing a redirect from https to plain http")
            } else if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(failed)?;
    let mut response = client.get(url).send().await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status(status));
    }
    if let Some(announced) = response.content_length().filter(|n| *n > MAX_RESOURCE_FILE) {
        return Err(FetchError::TooLarge(announced));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if (body.len() + chunk.len()) as u64 > MAX_RESOURCE_FILE {
            return Err(FetchError::TooLong);
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| FetchError::NotText)
}
