//! The client's OAuth2 flows for an account's `[oauth2]` table: where the provider's endpoints
//! are, the authorization code flow with PKCE (RFC 7636) and a loopback redirect (RFC 8252), the
//! device flow (RFC 8628), and [`access_token`], which gives a token good for the next minute,
//! refreshing it (and keeping a rotated refresh token) when needed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, CsrfToken, DeviceAuthorizationUrl, EndpointMaybeSet,
    EndpointNotSet, PkceCodeChallenge, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    StandardDeviceAuthorizationResponse, TokenResponse, TokenUrl,
};
use pillarbox_accounts::{ClientSecret, OAuth2, OAuth2Provider};
use pillarbox_proto::Secret;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::{Http, HttpError};
use crate::tokens::{TokenSet, TokenStore};

/// An access token is refreshed when it has less than this left.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long `authorize` waits for the browser to come back.
pub const AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(300);

/// Google's scope for POP (and IMAP, SMTP): all of Gmail.
pub const GOOGLE_SCOPES: [&str; 1] = ["https://mail.google.com/"];
/// Microsoft's delegated POP permission, and a refresh token.
pub const MICROSOFT_SCOPES: [&str; 2] = ["https://outlook.office.com/POP.AccessAsUser.All", "offline_access"];

/// Why getting a token failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("account {0} has no OAuth2 tokens yet: run `pillarbox account authorize {0}`")]
    NotAuthorized(String),
    /// The provider said no, with an OAuth2 error code (RFC 6749 section 5.2).
    #[error("the provider refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { error: String, description: Option<String> },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    TimedOut(String),
}

impl OAuthError {
    /// sysexits.h: 77 (no permission: authorize again), 78 (configuration), 75 (try later),
    /// 74 (local I/O).
    pub fn exit_code(&self) -> u8 {
        match self {
            OAuthError::NotAuthorized(_) | OAuthError::Refused { .. } => 77,
            OAuthError::Config(_) => 78,
            OAuthError::Http(HttpError::Config(_)) => 78,
            OAuthError::Http(_) | OAuthError::TimedOut(_) => 75,
            OAuthError::Store(_) => 74,
        }
    }

    /// The OAuth2 error code, when the provider gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            OAuthError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// What went wrong and what to do, for `check` and the fetch summary.
    pub fn explain(&self, account: &str) -> (String, String) {
        let again = format!("run `pillarbox account authorize {account}` again");
        let description = match self {
            OAuthError::Refused { description, .. } => description.clone().unwrap_or_default(),
            _ => String::new(),
        };
        match self.code() {
            // Microsoft's AADSTS codes say which kind of invalid_grant it is.
            Some(_) if description.contains("AADSTS50011") => redirect_mismatch(),
            Some("redirect_uri_mismatch") => redirect_mismatch(),
            Some("invalid_grant") => (
                "the provider no longer accepts this account's refresh token: it expired, was revoked, the consent \
                 was withdrawn, the password was changed, or a policy of the organisation (Microsoft's conditional \
                 access) ended it"
                    .into(),
                again,
            ),
            Some("invalid_client" | "unauthorized_client") => (
                "the provider does not accept the client: client_id is unknown to it, the client secret is wrong or \
                 expired, or the client may not use this flow"
                    .into(),
                "check client_id and the client secret in the account's [oauth2] table against the app you \
                 registered (Google: an OAuth client of type \"Desktop app\"; Microsoft: a public client with the \
                 \"Mobile and desktop applications\" platform)"
                    .into(),
            ),
            Some("invalid_scope") => (
                "the provider refused the scopes asked for (the POP permission is missing from the app, or the \
                 device flow cannot have it: Google does not allow mail scopes there)"
                    .into(),
                "add the POP permission to the app you registered, check `scopes`, and for Google authorize without \
                 --device"
                    .into(),
            ),
            Some("access_denied") => (
                "the consent was not given at the provider's page".into(),
                format!("{again}, and allow access when the provider asks"),
            ),
            Some("expired_token") => ("the device code expired before it was entered".into(), again),
            Some(_) => ("the provider refused the request".into(), again),
            None => match self {
                OAuthError::NotAuthorized(_) => {
                    ("the account has no OAuth2 tokens yet".into(), again.replace(" again", ""))
                }
                OAuthError::Http(_) => {
                    ("the provider cannot be reached".into(), "check the network; the next fetch tries again".into())
                }
                OAuthError::TimedOut(_) => ("nobody completed the sign-in in time".into(), again),
                OAuthError::Config(_) => ("the account's [oauth2] table cannot be used".into(), "fix the table".into()),
                _ => ("the tokens cannot be kept".into(), "check the state folder's permissions and free space".into()),
            },
        }
    }
}

fn redirect_mismatch() -> (String, String) {
    (
        "the provider does not accept Pillarbox's loopback redirect for this client".into(),
        "register the redirect: Google, use an OAuth client of type \"Desktop app\" (loopback redirects are allowed); \
         Microsoft, add the platform \"Mobile and desktop applications\" with the redirect URI http://localhost"
            .into(),
    )
}

impl<'c> oauth2::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.oauth2(request))
    }
}

/// A provider's endpoints and what to ask of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: Option<String>,
    pub token: String,
    pub device: Option<String>,
    pub scopes: Vec<String>,
    /// The issuer, when known (an authorization response's `iss` must name it, RFC 9207).
    pub issuer: Option<String>,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
}

/// Where `o`'s provider is: the presets for Google and Microsoft, or a custom provider's
/// discovery document (OpenID Connect Discovery, then RFC 8414); endpoints written in the table
/// win.
pub async fn endpoints(o: &OAuth2, http: &Http) -> Result<Endpoints, OAuthError> {
    let mut e = match o.provider {
        OAuth2Provider::Google => Endpoints {
            authorization: Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
            token: "https://oauth2.googleapis.com/token".into(),
            device: Some("https://oauth2.googleapis.com/device/code".into()),
            scopes: GOOGLE_SCOPES.map(String::from).to_vec(),
            issuer: Some("https://accounts.google.com".into()),
        },
        OAuth2Provider::Microsoft => {
            let tenant = o.tenant.as_deref().unwrap_or("common");
            let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
            Endpoints {
                authorization: Some(format!("{base}/authorize")),
                token: format!("{base}/token"),
                device: Some(format!("{base}/devicecode")),
                scopes: MICROSOFT_SCOPES.map(String::from).to_vec(),
                issuer: None,
            }
        }
        OAuth2Provider::Custom => match &o.issuer {
            Some(issuer) if o.token_url.is_none() || (o.authorization_url.is_none() && o.device_url.is_none()) => {
                let m = discover(http, issuer).await?;
                Endpoints {
                    authorization: m.authorization_endpoint,
                    token: m.token_endpoint.ok_or_else(|| {
                        OAuthError::Config(format!("the issuer {issuer} publishes no token_endpoint; set token_url"))
                    })?,
                    device: m.device_authorization_endpoint,
                    scopes: vec!["openid".into(), "offline_access".into()],
                    issuer: Some(m.issuer),
                }
            }
            _ => Endpoints {
                authorization: None,
                token: String::new(),
                device: None,
                scopes: vec!["openid".into(), "offline_access".into()],
                issuer: o.issuer.clone(),
            },
        },
    };
    if let Some(u) = &o.authorization_url {
        e.authorization = Some(u.clone());
    }
    if let Some(u) = &o.token_url {
        e.token = u.clone();
    }
    if let Some(u) = &o.device_url {
        e.device = Some(u.clone());
    }
    if !o.scopes.is_empty() {
        e.scopes = o.scopes.clone();
    }
    Ok(e)
}

async fn discover(http: &Http, issuer: &str) -> Result<Metadata, OAuthError> {
    let base = issuer.trim_end_matches('/');
    let oidc = format!("{base}/.well-known/openid-configuration");
    let m: Metadata = match http.get_json(&oidc).await {
        Ok(m) => m,
        Err(HttpError::Status { status: 404, .. }) => {
            http.get_json(&format!("{base}/.well-known/oauth-authorization-server")).await?
        }
        Err(e) => return Err(e.into()),
    };
    if m.issuer.trim_end_matches('/') != base {
        return Err(OAuthError::Config(format!(
            "{oidc} names the issuer {:?}, not {issuer:?}: check `issuer`",
            m.issuer
        )));
    }
    Ok(m)
}

/// The client secret, from its command or file (`None`: a public client).
pub fn client_secret(o: &OAuth2) -> Result<Option<Secret<String>>, OAuthError> {
    let bytes = match &o.client_secret {
        None => return Ok(None),
        Some(ClientSecret::Command(cmd)) => pillarbox_os::secret_from_command(cmd, "client_secret_command"),
        Some(ClientSecret::File(path)) => pillarbox_os::read_private_file(path),
    }
    .map_err(OAuthError::Config)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(Some(Secret::new(text.lines().next().unwrap_or("").trim().to_owned())))
}

type Client = BasicClient<EndpointMaybeSet, EndpointMaybeSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet>;

fn url_error(what: &str) -> impl Fn(oauth2::url::ParseError) -> OAuthError + '_ {
    move |e| OAuthError::Config(format!("the {what} URL is not valid: {e}"))
}

fn client(o: &OAuth2, e: &Endpoints, secret: Option<&Secret<String>>) -> Result<Client, OAuthError> {
    let auth = e.authorization.clone().map(AuthUrl::new).transpose().map_err(url_error("authorization"))?;
    let device = e.device.clone().map(DeviceAuthorizationUrl::new).transpose().map_err(url_error("device"))?;
    if e.token.is_empty() {
        return Err(OAuthError::Config("no token endpoint: set token_url or issuer".into()));
    }
    let token = TokenUrl::new(e.token.clone()).map_err(url_error("token"))?;
    let mut c = BasicClient::new(ClientId::new(o.client_id.clone()))
        .set_auth_uri_option(auth)
        .set_device_authorization_url_option(device)
        .set_token_uri_option(Some(token))
        // The client id (and secret) in the body, as Google wants; every provider takes it.
        .set_auth_type(AuthType::RequestBody);
    if let Some(s) = secret {
        c = c.set_client_secret(oauth2::ClientSecret::new(s.expose().clone()));
    }
    Ok(c)
}

fn refused<RE: std::error::Error + 'static>(e: RequestTokenError<RE, BasicErrorResponse>) -> OAuthError {
    token_error(e, |r| (r.error().to_string(), r.error_description().cloned()))
}

fn token_error<RE: std::error::Error + 'static, T: oauth2::ErrorResponse>(
    e: RequestTokenError<RE, T>,
    parts: impl Fn(&T) -> (String, Option<String>),
) -> OAuthError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let (error, description) = parts(&r);
            OAuthError::Refused { error, description }
        }
        RequestTokenError::Request(e) => OAuthError::Config(format!("the request to the provider failed: {e}")),
        RequestTokenError::Parse(e, body) => OAuthError::Config(format!(
            "the provider's answer is not an OAuth2 token response ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )),
        RequestTokenError::Other(s) => OAuthError::Config(s),
    }
}

/// The tokens of a token response.
fn token_set(r: &BasicTokenResponse, e: &Endpoints, o: &OAuth2, previous_refresh: Option<&str>) -> TokenSet {
    let now = pillarbox_os::unix_now();
    TokenSet {
        access_token: r.access_token().secret().clone(),
        expires_at: r.expires_in().map(|d| now + d.as_secs()),
        // A provider that does not rotate refresh tokens sends none with a refresh: keep ours.
        refresh_token: r.refresh_token().map(|t| t.secret().clone()).or(previous_refresh.map(str::to_owned)),
        scope: r.scopes().map(|s| s.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")),
        token_url: e.token.clone(),
        client_id: o.client_id.clone(),
        obtained_at: now,
    }
}

/// What `authorize` shows the person: the URL to open (and whether a browser was started).
pub trait Prompt {
    fn open_url(&self, url: &str);
    fn device_code(&self, verification_uri: &str, user_code: &str, complete: Option<&str>);
}

/// The authorization code flow: a loopback listener for the redirect, the provider's page in a
/// browser (or wherever the person opens the URL), then the code exchanged with its PKCE
/// verifier. `login_hint` pre-fills the account at the provider.
pub async fn authorize_code(
    o: &OAuth2,
    http: &Http,
    login_hint: &str,
    prompt: &dyn Prompt,
) -> Result<(TokenSet, Endpoints), OAuthError> {
    let e = endpoints(o, http).await?;
    if e.authorization.is_none() {
        return Err(OAuthError::Config(
            "the provider has no authorization endpoint: set authorization_url, or use --device".into(),
        ));
    }
    let secret = client_secret(o)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| OAuthError::Config(format!("cannot listen on the loopback address for the redirect: {e}")))?;
    let port = listener.local_addr().map_err(|e| OAuthError::Config(e.to_string()))?.port();
    // Microsoft registers the loopback redirect as http://localhost (any port); the others take
    // the address itself (RFC 8252 section 7.3).
    let host = if o.provider == OAuth2Provider::Microsoft { "localhost" } else { "127.0.0.1" };
    let redirect = format!("http://{host}:{port}/");
    let c =
        client(o, &e, secret.as_ref())?.set_redirect_uri(RedirectUrl::new(redirect).map_err(url_error("redirect"))?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = c
        .authorize_url(CsrfToken::new_random)
        .map_err(|e| OAuthError::Config(e.to_string()))?
        .add_scopes(e.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge);
    if !login_hint.is_empty() {
        request = request.add_extra_param("login_hint", login_hint.to_owned());
    }
    if o.provider == OAuth2Provider::Google {
        // A refresh token, every time (Google sends one only at the first consent otherwise).
        request = request.add_extra_param("access_type", "offline").add_extra_param("prompt", "consent");
    }
    let (url, state) = request.url();
    prompt.open_url(url.as_str());
    let code = tokio::time::timeout(AUTHORIZE_TIMEOUT, redirect_code(&listener, state.secret(), e.issuer.as_deref()))
        .await
        .map_err(|_| {
            OAuthError::TimedOut(format!(
                "no answer from the browser within {} minutes",
                AUTHORIZE_TIMEOUT.as_secs() / 60
            ))
        })??;
    let r = c
        .exchange_code(AuthorizationCode::new(code.expose().clone()))
        .map_err(|e| OAuthError::Config(e.to_string()))?
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(refused)?;
    if r.refresh_token().is_none() {
        tracing::warn!(
            "the provider gave no refresh token: the account must be authorized again when the access token expires (ask for the offline_access scope)"
        );
    }
    Ok((token_set(&r, &e, o, None), e))
}

/// Wait for the browser's request to the loopback redirect; answer it with a page saying what
/// happened. Requests without a code or error (a favicon) get a 404; a wrong `state` is
/// refused and the wait goes on (RFC 6749 section 10.12).
async fn redirect_code(
    listener: &tokio::net::TcpListener,
    state: &str,
    issuer: Option<&str>,
) -> Result<Secret<String>, OAuthError> {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        while len < buf.len() {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf[len..])).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..len]).into_owned();
        let target = head.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let params: Vec<(String, String)> =
            oauth2::url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let (status, page, outcome) = match (get("code"), get("error")) {
            (None, None) => ("404 Not Found", "Not found.".to_owned(), None),
            _ if get("state").as_deref() != Some(state) => (
                "400 Bad Request",
                "This answer does not belong to the authorization Pillarbox started (its state differs).".into(),
                None,
            ),
            _ if issuer.is_some() && get("iss").is_some_and(|i| Some(i.as_str()) != issuer) => {
                ("400 Bad Request", "This answer comes from another issuer than the one Pillarbox asked.".into(), None)
            }
            (_, Some(error)) => {
                let description = get("error_description");
                (
                    "200 OK",
                    format!("Pillarbox was not authorized: {error}. You can close this window."),
                    Some(Err(OAuthError::Refused { error, description })),
                )
            }
            (Some(code), None) => (
                "200 OK",
                "Pillarbox is authorized. You can close this window and go back to the terminal.".into(),
                Some(Ok(Secret::new(code))),
            ),
        };
        let body = format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Pillarbox</title></head><body><p>{}</p></body></html>",
            html_escape(&page)
        );
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The device flow: the person enters a code at the provider's page on any device, while this
/// polls the token endpoint at the interval the provider asks for.
pub async fn authorize_device(
    o: &OAuth2,
    http: &Http,
    prompt: &dyn Prompt,
) -> Result<(TokenSet, Endpoints), OAuthError> {
    if o.provider == OAuth2Provider::Google {
        return Err(OAuthError::Refused {
            error: "invalid_scope".into(),
            description: Some(
                "Google does not allow mail scopes in the device flow; run `pillarbox account authorize` without \
                 --device (it prints a URL to open in any browser)"
                    .into(),
            ),
        });
    }
    let e = endpoints(o, http).await?;
    if e.device.is_none() {
        return Err(OAuthError::Config(
            "the provider has no device authorization endpoint: set device_url, or authorize without --device".into(),
        ));
    }
    let secret = client_secret(o)?;
    let c = client(o, &e, secret.as_ref())?;
    let details: StandardDeviceAuthorizationResponse = c
        .exchange_device_code()
        .map_err(|e| OAuthError::Config(e.to_string()))?
        .add_scopes(e.scopes.iter().cloned().map(Scope::new))
        .request_async(http)
        .await
        .map_err(refused)?;
    prompt.device_code(
        details.verification_uri().as_str(),
        details.user_code().secret(),
        details.verification_uri_complete().map(|u| u.secret().as_str()),
    );
    let r = c
        .exchange_device_access_token(&details)
        .map_err(|e| OAuthError::Config(e.to_string()))?
        .request_async(http, tokio::time::sleep, None)
        .await
        .map_err(|e| token_error(e, |r| (r.error().to_string(), r.error_description().cloned())))?;
    Ok((token_set(&r, &e, o, None), e))
}

/// An access token for `account`, good for at least [`REFRESH_MARGIN`]: the stored one, or a
/// new one from the refresh token (`force`: refresh even if the stored one looks good, after the
/// server refused it). A rotated refresh token is written before the access token is used.
pub async fn access_token(
    store: &TokenStore,
    account: &str,
    o: &OAuth2,
    http: &Http,
    force: bool,
) -> Result<Secret<String>, OAuthError> {
    let now = pillarbox_os::unix_now();
    let margin = REFRESH_MARGIN.as_secs();
    if !force
        && let Some(t) = store.load(account).map_err(OAuthError::Store)?
        && t.fresh(now, margin)
        && t.client_id == o.client_id
    {
        return Ok(Secret::new(t.access_token));
    }
    // Under the lock, read again: another fetch may have refreshed meanwhile.
    let _lock = store.lock(account).await.map_err(OAuthError::Store)?;
    let Some(current) = store.load(account).map_err(OAuthError::Store)? else {
        return Err(OAuthError::NotAuthorized(account.to_owned()));
    };
    if current.client_id != o.client_id {
        return Err(OAuthError::Config(format!(
            "the account's tokens were issued to another client_id ({}); run `pillarbox account authorize {account}` again",
            current.client_id
        )));
    }
    // Obtained since this call began: another fetch refreshed while this one waited.
    let refreshed_by_another = current.obtained_at >= now;
    if current.fresh(pillarbox_os::unix_now(), margin) && (!force || refreshed_by_another) {
        return Ok(Secret::new(current.access_token));
    }
    let Some(refresh) = current.refresh_token.clone() else {
        return Err(OAuthError::Refused {
            error: "invalid_grant".into(),
            description: Some("the access token expired and there is no refresh token".into()),
        });
    };
    // A custom provider's discovery document that cannot be read now: the token endpoint the
    // tokens came from will do.
    let e = match endpoints(o, http).await {
        Ok(e) => e,
        Err(_) if !current.token_url.is_empty() => Endpoints {
            authorization: None,
            token: current.token_url.clone(),
            device: None,
            scopes: Vec::new(),
            issuer: None,
        },
        Err(err) => return Err(err),
    };
    let secret = client_secret(o)?;
    let r = client(o, &e, secret.as_ref())?
        .exchange_refresh_token(&RefreshToken::new(refresh.clone()))
        .map_err(|e| OAuthError::Config(e.to_string()))?
        .request_async(http)
        .await
        .map_err(refused)?;
    let mut next = token_set(&r, &e, o, Some(&refresh));
    if next.scope.is_none() {
        next.scope = current.scope;
    }
    store.save(account, &next).map_err(OAuthError::Store)?;
    tracing::info!(account, rotated = r.refresh_token().is_some(), "OAuth2 access token refreshed");
    Ok(Secret::new(next.access_token))
}

/// Store the tokens of a completed authorization.
pub fn keep(store: &TokenStore, account: &str, tokens: &TokenSet) -> Result<(), OAuthError> {
    store.save(account, tokens).map_err(OAuthError::Store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth2(provider: OAuth2Provider) -> OAuth2 {
        OAuth2 {
            provider,
            client_id: "id".into(),
            client_secret: None,
            tenant: None,
            scopes: Vec::new(),
            issuer: None,
            authorization_url: None,
            token_url: None,
            device_url: None,
        }
    }

    #[tokio::test]
    async fn presets_for_google_and_microsoft() {
        let http = Http::new(None).expect("http");
        let g = endpoints(&oauth2(OAuth2Provider::Google), &http).await.expect("google");
        assert_eq!(g.token, "https://oauth2.googleapis.com/token");
        assert_eq!(g.scopes, ["https://mail.google.com/"]);
        let m = endpoints(&OAuth2 { tenant: Some("contoso.com".into()), ..oauth2(OAuth2Provider::Microsoft) }, &http)
            .await
            .expect("microsoft");
        assert_eq!(m.token, "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token");
        assert_eq!(m.device.as_deref(), Some("https://login.microsoftonline.com/contoso.com/oauth2/v2.0/devicecode"));
        assert!(m.scopes.contains(&"https://outlook.office.com/POP.AccessAsUser.All".to_owned()));
        let m = endpoints(&oauth2(OAuth2Provider::Microsoft), &http).await.expect("microsoft");
        assert!(m.token.contains("/common/"), "the default tenant");
    }

    #[test]
    fn each_refusal_is_explained_with_its_fix() {
        let refused = |error: &str, description: Option<&str>| OAuthError::Refused {
            error: error.into(),
            description: description.map(String::from),
        };
        let (cause, fix) = refused("invalid_grant", None).explain("work");
        assert!(cause.contains("revoked") && fix.contains("pillarbox account authorize work"), "{cause} / {fix}");
        assert!(refused("invalid_client", None).explain("w").1.contains("client_id"));
        assert!(
            refused("invalid_request", Some("AADSTS50011: The redirect URI ... does not match"))
                .explain("w")
                .1
                .contains("http://localhost")
        );
        assert!(refused("invalid_scope", None).explain("w").0.contains("scopes"));
        assert_eq!(refused("invalid_grant", None).exit_code(), 77);
        assert_eq!(OAuthError::NotAuthorized("w".into()).exit_code(), 77);
        assert_eq!(OAuthError::TimedOut("x".into()).exit_code(), 75);
    }
}
