//! The admin API as the subcommands that talk to a running proxy see it
//! (`weir backends`, `tail`, `patterns`, `rehydrate`): where it listens, its
//! token, one call and its JSON answer, or a stream of lines.
use http::Method;
use http_body_util::BodyExt;
use serde_json::Value;
use std::time::Duration;

/// How long a call (connect and answer) may take; a stream only bounds its connect.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The flags every admin subcommand takes.
#[derive(clap::Args, Clone)]
pub struct AdminArgs {
    /// The admin listener: `HOST:PORT` or `http://HOST:PORT` (its `admin.address`).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub admin: String,
    /// The admin token (`admin.token`); better given in the environment, where `ps` does not show it.
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A running proxy's admin listener.
pub struct Admin {
    /// `http://HOST:PORT[/prefix]`, no trailing `/`.
    base: String,
    token: Option<String>,
    rt: tokio::runtime::Runtime,
}

impl Admin {
    pub fn new(args: &AdminArgs) -> Result<Admin, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Admin {
            base: base_url(&args.admin)?,
            token: args.token.clone().filter(|t| !t.is_empty()),
            rt,
        })
    }

    /// The full URL of `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// Calls `method path_and_query` with `body` as JSON; the JSON of a 2xx answer, or
    /// an error with the status and the proxy's own message.
    pub fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let url = self.url(path_and_query);
        self.rt.block_on(async {
            let resp = tokio::time::timeout(TIMEOUT, self.send(method, &url, body))
                .await
                .map_err(|_| format!("{url}: no answer within {}s", TIMEOUT.as_secs()))??;
            let status = resp.status();
            let bytes = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
                .await
                .map_err(|_| {
                    format!(
                        "{url}: the answer did not finish within {}s",
                        TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| format!("{url}: reading the answer: {}", causes(&e)))?
                .to_bytes();
            if !status.is_success() {
                return Err(refused(&url, status, &bytes));
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("{url} answered something that is not JSON: {e}"))
        })
    }

    /// GETs `path_and_query` and hands each line of the answer to `line` as it
    /// arrives, until the answer ends or `line` returns false.
    pub fn stream(
        &self,
        path_and_query: &str,
        mut line: impl FnMut(&str) -> bool,
    ) -> Result<(), String> {
        let url = self.url(path_and_query);
        self.rt.block_on(async {
            let resp = tokio::time::timeout(TIMEOUT, self.send(Method::GET, &url, None))
                .await
                .map_err(|_| format!("{url}: no answer within {}s", TIMEOUT.as_secs()))??;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(refused(&url, status, &bytes));
            }
            let mut pending: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| format!("{url}: the stream broke: {}", causes(&e)))?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let text = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..=end);
                    if !line(text.trim_end_matches('\r')) {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let mut req = http::Request::builder().method(method).uri(url);
        if let Some(token) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(v).expect("a JSON value serializes")
            }
            None => Vec::new(),
        };
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
            .map_err(|e| format!("{url}: {e}"))?;
        client.request(req).await.map_err(|e| {
            format!(
                "cannot reach the admin listener at {url}: {} (is `weir run` running, with this admin.address?)",
                causes(&e)
            )
        })
    }
}

/// A non-2xx answer as an error: the proxy's message (`{"errors": [...]}`) when it sent one.
fn refused(url: &str, status: http::StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let hint = match status {
        http::StatusCode::UNAUTHORIZED => {
            " (give the admin token with --token or WEIR_ADMIN_TOKEN)"
        }
        _ => "",
    };
    format!("{url} answered {status}: {message}{hint}")
}

/// `http://HOST:PORT[/prefix]` from `HOST:PORT`, `http://HOST:PORT` or `http://HOST:PORT/prefix`.
pub fn base_url(admin: &str) -> Result<String, String> {
    let bad =
        |why: &str| format!("--admin {admin:?}: {why}; expected HOST:PORT or http://HOST:PORT");
    let with_scheme = match admin.split_once("://") {
        Some(("http", _)) => admin.to_string(),
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "the admin listener speaks plain http, not {scheme}"
            )))
        }
        None => format!("http://{admin}"),
    };
    let base: http::Uri = with_scheme.parse().map_err(|e| bad(&format!("{e}")))?;
    if base.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    // A URL may leave the port to its scheme; HOST alone would mean port 80, never the admin's.
    if !admin.contains("://") && base.port().is_none() {
        return Err(bad("no port"));
    }
    if base.query().is_some() {
        return Err(bad("a query string is not expected"));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// `e` and its sources, `outer: inner: innermost`, each message once: hyper's "client error
/// (Connect)" alone does not say that the connection was refused.
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// `s` as one component of a URL's query string.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_accepts_host_port_and_http_urls() {
        for (given, url) in [
            ("127.0.0.1:19181", "http://127.0.0.1:19181"),
            ("http://127.0.0.1:19181", "http://127.0.0.1:19181"),
            ("http://127.0.0.1:19181/", "http://127.0.0.1:19181"),
            ("localhost:8089", "http://localhost:8089"),
            ("[::1]:8089", "http://[::1]:8089"),
            ("http://proxy:80/weir/", "http://proxy:80/weir"),
        ] {
            assert_eq!(base_url(given).unwrap(), url, "{given}");
        }
        for (given, why) in [
            ("https://127.0.0.1:8089", "plain http, not https"),
            ("", "expected HOST:PORT"),
            ("http://", "expected HOST:PORT"),
            ("127.0.0.1 8089", "expected HOST:PORT"),
            ("localhost", "no port"),
        ] {
            let err = base_url(given).unwrap_err();
            assert!(err.contains(why), "{given:?}: {err}");
        }
    }

    #[test]
    fn causes_walks_the_source_chain() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(causes(&e), "client error (Connect): connection refused");
    }

    #[test]
    fn query_components_are_escaped() {
        assert_eq!(
            query_escape("status:error -env:dev"),
            "status%3Aerror%20-env%3Adev"
        );
        assert_eq!(query_escape("a&b=c"), "a%26b%3Dc");
    }

    #[test]
    fn refusals_carry_the_proxys_message() {
        let e = refused(
            "http://x/admin/tail",
            http::StatusCode::UNAUTHORIZED,
            br#"{"errors":["a bearer token is required"]}"#,
        );
        assert!(
            e.contains("401") && e.contains("a bearer token is required") && e.contains("--token"),
            "{e}"
        );
    }
}
