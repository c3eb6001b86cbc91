//! The web console: three files built into the binary (no web server, no build step), served at
//! `/` beside the API they call. The page holds the admin token in the tab's session storage
//! and sends it as the API's bearer token; the Content Security Policy lets it load only its
//! own script and style, run no inline code, build no HTML from strings (Trusted Types), talk
//! only to this server and be framed by no one.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AdminState;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");
const ICON: &str = include_str!("../console/icon.svg");

/// What the console's page may do.
pub(crate) const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

pub(crate) fn routes() -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/", get(|| async { file(INDEX, "text/html; charset=utf-8") }))
        .route("/console.js", get(|| async { file(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/console.css", get(|| async { file(STYLE, "text/css; charset=utf-8") }))
        .route("/icon.svg", get(|| async { file(ICON, "image/svg+xml") }))
}

fn file(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    // Asked for again each time, so the page and its script always come from the same binary.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
