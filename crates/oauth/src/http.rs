//! The HTTPS client both sides use: rustls with the platform's trust store (plus an optional
//! CA file), short timeouts, no redirects followed (a token endpoint that redirects is a
//! misconfiguration, or an attempt to send a secret elsewhere), and only `https` URLs, except
//! plain `http` to this machine's loopback addresses (RFC 8252 section 8.3's reasoning).

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url} answered something that is not the expected JSON: {detail}")]
    Json { url: String, detail: String },
}

/// An HTTPS client.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

/// A URL this client may call: `https`, or `http` to a loopback address.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err(format!("{url} must be an https URL (plain http only to this machine's loopback address)")),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(oauth2::url::Host::Ipv4(a)) => a.is_loopback(),
        Some(oauth2::url::Host::Ipv6(a)) => a.is_loopback(),
        Some(oauth2::url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The body of an error answer, shortened, for a message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

impl Http {
    /// A client trusting the platform's certificate authorities and those in `ca_file` (PEM).
    pub fn new(ca_file: Option<&Path>) -> Result<Self, HttpError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Pillarbox/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| HttpError::Config(format!("reading ca_file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| HttpError::Config(format!("ca_file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(HttpError::Config(format!("ca_file {}: no certificate in it", path.display())));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| HttpError::Config(format!("cannot set up HTTPS: {e}")))?;
        Ok(Self { client })
    }

    /// A client that reaches `host` at `addrs` (looked up by the caller's own resolver), with
    /// the platform's trust store.
    pub fn reaching(host: &str, addrs: &[std::net::SocketAddr]) -> Result<Self, HttpError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Pillarbox/", env!("CARGO_PKG_VERSION")))
            .resolve_to_addrs(host, addrs)
            .build()
            .map_err(|e| HttpError::Config(format!("cannot set up HTTPS: {e}")))?;
        Ok(Self { client })
    }

    /// GET `url` (http or https: the caller decides what a plain-HTTP answer is worth), at most
    /// `limit` octets of it: the status and the body.
    pub async fn get_text(&self, url: &str, limit: usize) -> Result<(u16, String), HttpError> {
        let resp = self.client.get(url).send().await.map_err(transport(url))?;
        let status = resp.status().as_u16();
        let body = read_body(resp, url, limit).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GET `url` and read its JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, HttpError> {
        check_url(url).map_err(HttpError::Config)?;
        let req = self.client.get(url).header("accept", "application/json");
        let (status, body) = self.exchange(url, req).await?;
        if status != 200 {
            return Err(HttpError::Status { url: url.to_owned(), status, body: excerpt(&body) });
        }
        serde_json::from_slice(&body).map_err(|e| HttpError::Json { url: url.to_owned(), detail: e.to_string() })
    }

    /// POST a form to `url` (with HTTP Basic client authentication, RFC 6749 section 2.3.1,
    /// when `basic` is given) and read its JSON answer, whatever its status.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<(u16, serde_json::Value), HttpError> {
        check_url(url).map_err(HttpError::Config)?;
        let mut req = self.client.post(url).header("accept", "application/json").form(form);
        if let Some((id, secret)) = basic {
            // RFC 6749 section 2.3.1: both are form-urlencoded before Basic encoding.
            let enc = |s: &str| oauth2::url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(id), Some(enc(secret)));
        }
        let (status, body) = self.exchange(url, req).await?;
        match serde_json::from_slice(&body) {
            Ok(v) => Ok((status, v)),
            Err(_) if status != 200 => Err(HttpError::Status { url: url.to_owned(), status, body: excerpt(&body) }),
            Err(e) => Err(HttpError::Json { url: url.to_owned(), detail: e.to_string() }),
        }
    }

    async fn exchange(&self, url: &str, req: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), HttpError> {
        let resp = req.send().await.map_err(transport(url))?;
        let status = resp.status().as_u16();
        Ok((status, read_body(resp, url, MAX_ANSWER).await?))
    }

    /// Run a request of the `oauth2` crate (its `AsyncHttpClient`).
    pub async fn oauth2(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let url = request.uri().to_string();
        check_url(&url).map_err(HttpError::Config)?;
        let (parts, body) = request.into_parts();
        let req = self.client.request(parts.method, &url).headers(parts.headers).body(body);
        let resp = req.send().await.map_err(transport(&url))?;
        let mut out = oauth2::http::Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        out.body(read_body(resp, &url, MAX_ANSWER).await?)
            .map_err(|e| HttpError::Json { url: url.clone(), detail: e.to_string() })
    }
}

/// The longest answer read from a provider (a discovery document, keys, a token response).
const MAX_ANSWER: usize = 1 << 20;

fn transport(url: &str) -> impl Fn(reqwest::Error) -> HttpError + '_ {
    move |e| HttpError::Transport { url: url.to_owned(), detail: error_chain(&e) }
}

/// A response's body, at most `limit` octets of it (a longer one is an error, not cut).
async fn read_body(mut resp: reqwest::Response, url: &str, limit: usize) -> Result<Vec<u8>, HttpError> {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport(url))? {
        if body.len() + chunk.len() > limit {
            return Err(HttpError::Status { url: url.to_owned(), status, body: format!("longer than {limit} octets") });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes ("error sending request: ... certificate not trusted").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http() {
        assert!(check_url("https://login.example.com/token").is_ok());
        assert!(check_url("http://127.0.0.1:8080/token").is_ok());
        assert!(check_url("http://[::1]/token").is_ok());
        assert!(check_url("http://localhost/token").is_ok());
        assert!(check_url("http://login.example.com/token").is_err());
        assert!(check_url("ftp://127.0.0.1/").is_err());
        assert!(check_url("not a url").is_err());
    }
}
