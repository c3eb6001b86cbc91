//! One small HTTP stack for what the server answers over HTTP besides POP3 and LMTP: the
//! metrics (`[metrics] listen`), the autoconfiguration of mail clients over HTTPS (`[listen]
//! https`, with the `[tls]` certificates and their SNI names, and ACME's TLS-ALPN-01), and plain
//! HTTP (`[listen] http`), which answers ACME's HTTP-01 and redirects everything else to HTTPS.
//! A listener each, one connection loop, and a router per site.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::autoconfig::{self, Offer};
use crate::frontend::Frontend;

/// What a listener serves.
#[derive(Clone)]
pub(crate) enum Site {
    /// `GET /metrics`.
    Metrics(Arc<pillarbox_core::Metrics>),
    /// Autoconfig and Autodiscover, over TLS.
    Autoconfig(Arc<Frontend>),
    /// ACME's HTTP-01 answers, and everything else redirected to HTTPS.
    Redirect(Arc<Frontend>),
    /// The admin API (`[admin] listen`).
    Admin(axum::Router),
}

/// Longest request body read (an Autodiscover request is a few hundred octets).
const MAX_BODY: usize = 16 * 1024;

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    h.insert(hyper::header::X_CONTENT_TYPE_OPTIONS, hyper::header::HeaderValue::from_static("nosniff"));
    r
}

fn not_found() -> Answer {
    answer(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n")
}

/// Serve `site` on `listener` (over TLS with `tls`) until the task is dropped, `slots`
/// connections at once (the rest wait in the kernel's queue).
pub(crate) async fn serve(listener: TcpListener, site: Site, tls: Option<TlsAcceptor>, slots: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(slots));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (site, tls) = (site.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let site = site.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&site, req, peer).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            let served = match tls {
                None => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    tokio::time::timeout(Duration::from_secs(30), builder.serve_connection(io, service)).await
                }
                Some(acceptor) => {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    else {
                        debug!(client = %peer, "https: TLS handshake failed");
                        return;
                    };
                    // A CA's TLS-ALPN-01 check ends with the handshake.
                    if tls.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                        return;
                    }
                    let io = hyper_util::rt::TokioIo::new(tls);
                    tokio::time::timeout(Duration::from_secs(30), builder.serve_connection(io, service)).await
                }
            };
            if let Ok(Err(e)) = served {
                debug!(client = %peer, error = %e, "http: connection ended with an error");
            }
        });
    }
}

async fn route(site: &Site, req: Request<Incoming>, peer: SocketAddr) -> Answer {
    match site {
        Site::Metrics(m) if req.uri().path() == "/metrics" && req.method() == Method::GET => {
            answer(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", m.render())
        }
        Site::Metrics(_) => answer(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "see /metrics\n"),
        Site::Redirect(front) => redirect(front, &req),
        Site::Admin(router) => admin(router, req, peer).await,
        Site::Autoconfig(front) => {
            let a = autoconfigure(front, req).await;
            debug!(client = %peer, status = a.status().as_u16(), "autoconfig");
            a
        }
    }
}

/// Longest admin API request body (a user or a domain is a few hundred octets).
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// An admin API request, answered by its router (whose answers are small JSON documents).
async fn admin(router: &axum::Router, mut req: Request<Incoming>, peer: SocketAddr) -> Answer {
    use tower::ServiceExt as _;
    req.extensions_mut().insert(pillarbox_admin::Peer(peer));
    let req = req.map(|body| axum::body::Body::new(Limited::new(body, MAX_ADMIN_BODY)));
    let response = match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    match body.collect().await {
        Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
        Err(e) => {
            warn!(error = %e, "admin API: an answer could not be made");
            answer(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "internal error\n")
        }
    }
}

/// The host a request was sent to, without its port, lower case.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let host = req.headers().get(hyper::header::HOST)?.to_str().ok()?;
    let host = match host.strip_prefix('[') {
        // An IPv6 literal, [::1]:443.
        Some(v6) => v6.split(']').next()?,
        None => host.split(':').next()?,
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// Plain HTTP: ACME's HTTP-01 answers, and everything else to the same place over HTTPS (308
/// keeps the method of an Autodiscover POST).
fn redirect<B>(front: &Frontend, req: &Request<B>) -> Answer {
    if let Some(token) = req.uri().path().strip_prefix("/.well-known/acme-challenge/") {
        return match front.acme.as_ref().and_then(|a| a.http01(token)) {
            Some(key_auth) => answer(StatusCode::OK, "application/octet-stream", key_auth),
            None => not_found(),
        };
    }
    let https = *front.https_port.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (Some(host), Some(https)) = (host_of(req), https) else { return not_found() };
    // An IPv6 literal goes back in brackets.
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let port = if https == 443 { String::new() } else { format!(":{https}") };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut r = answer(StatusCode::PERMANENT_REDIRECT, "text/plain; charset=utf-8", "over HTTPS\n");
    if let Ok(v) = format!("https://{host}{port}{path}").parse() {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

/// The POP3 server's name for clients (see [`autoconfig::pop_host`]).
fn pop_host(front: &Frontend) -> String {
    let set = front.certificates.as_ref().map(|c| c.current());
    autoconfig::pop_host(&front.config(), set.as_deref(), &front.services.hostname)
}

/// A parameter of the request's query, decoded.
fn query_value<B>(req: &Request<B>, key: &str) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

fn domain_of(address: &str) -> Option<String> {
    let (local, domain) = address.trim().rsplit_once('@')?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    (!local.is_empty() && !domain.is_empty() && domain.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c)))
        .then_some(domain)
}

async fn autoconfigure(front: &Arc<Frontend>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_ascii_lowercase();
    let config = front.config();
    let (pop3, pop3s) = *front.ports.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let domains = match front.services.domains().await {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "the domain registry cannot be read");
            return answer(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "try again later\n");
        }
    };
    let serves = |domain: &str| autoconfig::served(&domains, domain);
    let offer = |domain: &str| {
        let mut o = Offer::new(&config, &domains, domain, &pop_host(front));
        // The ports the listeners really have.
        o.pop3s_port = o.pop3s_port.and(pop3s);
        o.pop3_starttls_port = o.pop3_starttls_port.and(pop3);
        o
    };
    match (req.method(), path.as_str()) {
        (&Method::GET, "/mail/config-v1.1.xml" | "/.well-known/autoconfig/mail/config-v1.1.xml") => {
            let address = query_value(&req, "emailaddress");
            // Without an address, the domain is the one whose autoconfig name was asked.
            let domain = match address {
                Some(a) => domain_of(&a),
                None => host_of(&req).map(|h| h.strip_prefix("autoconfig.").map(str::to_owned).unwrap_or(h)),
            };
            match domain.filter(|d| serves(d)) {
                Some(d) => {
                    answer(StatusCode::OK, "application/xml; charset=utf-8", autoconfig::thunderbird(&offer(&d)))
                }
                None => not_found(),
            }
        }
        (&Method::GET, "/email.mobileconfig") => {
            let address = query_value(&req, "emailaddress");
            let Some((address, domain)) = address.and_then(|a| domain_of(&a).map(|d| (a, d))) else {
                return answer(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", "give ?emailaddress=\n");
            };
            if !serves(&domain) {
                return not_found();
            }
            let Some(certs) = &front.certificates else { return not_found() };
            // Signed with the certificate of the name the profile was asked at.
            let pair = certs.current().choose(host_of(&req).as_deref());
            match crate::profile::sign(crate::profile::plist(&offer(&domain), &address).as_bytes(), &pair) {
                Ok(der) => {
                    let mut r = answer(StatusCode::OK, "application/x-apple-aspen-config", der);
                    if let Ok(v) = format!("attachment; filename=\"{domain}.mobileconfig\"").parse() {
                        r.headers_mut().insert(hyper::header::CONTENT_DISPOSITION, v);
                    }
                    r
                }
                Err(e) => {
                    warn!(error = e, "cannot sign a configuration profile");
                    answer(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "cannot sign the profile\n")
                }
            }
        }
        (&Method::POST, "/autodiscover/autodiscover.xml") => {
            let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
                return answer(StatusCode::PAYLOAD_TOO_LARGE, "text/plain; charset=utf-8", "too large\n");
            };
            let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            let Some(address) = autoconfig::autodiscover_address(&body) else {
                return answer(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", "no EMailAddress\n");
            };
            match domain_of(&address).filter(|d| serves(d)) {
                Some(d) => {
                    answer(StatusCode::OK, "text/xml; charset=utf-8", autoconfig::autodiscover(&offer(&d), &address))
                }
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str) -> Request<()> {
        Request::builder().uri("/x?y=1").header(hyper::header::HOST, host).body(()).expect("request")
    }

    #[test]
    fn the_host_a_request_was_sent_to() {
        assert_eq!(host_of(&request("Autoconfig.Example.COM.:8080")).as_deref(), Some("autoconfig.example.com"));
        assert_eq!(host_of(&request("example.com")).as_deref(), Some("example.com"));
        assert_eq!(host_of(&request("[::1]:80")).as_deref(), Some("::1"));
        assert_eq!(host_of(&request("127.0.0.1:80")).as_deref(), Some("127.0.0.1"));
    }
}
