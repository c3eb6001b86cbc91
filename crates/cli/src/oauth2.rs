//! `pillarbox account authorize`: getting an account's OAuth2 tokens (the code flow through a
//! browser and a loopback redirect, or the device flow), and what `account add` knows about the
//! providers that require OAuth2 for POP.

use anyhow::{Result, bail};
use pillarbox_accounts::{Account, OAuth2, OAuth2Provider, PasswordSource};
use pillarbox_oauth::Http;
use pillarbox_oauth::flow::{self, OAuthError};
use pillarbox_oauth::tokens::TokenStore;

/// What the person is shown while authorizing.
struct Terminal;

impl flow::Prompt for Terminal {
    fn open_url(&self, url: &str) {
        let opened = open_browser(url);
        eprintln!(
            "{} this page to sign in and allow Pillarbox to read your mail:\n\n  {url}\n\n\
             Waiting for the browser to come back (up to {} minutes; Ctrl-C to stop)...",
            if opened { "A browser should open; if not, open" } else { "Open" },
            flow::AUTHORIZE_TIMEOUT.as_secs() / 60
        );
    }

    fn device_code(&self, verification_uri: &str, user_code: &str, complete: Option<&str>) {
        eprintln!(
            "On any device, open\n\n  {verification_uri}\n\nand enter the code\n\n  {user_code}\n{}\nWaiting for the sign-in (Ctrl-C to stop)...",
            complete.map(|c| format!("\n(or open {c}, which has the code in it)\n")).unwrap_or_default()
        );
    }
}

/// Start the desktop's browser on `url`, when there is a desktop (`$BROWSER`, or xdg-open under
/// X11 or Wayland; `open` on macOS). Whether one was started.
fn open_browser(url: &str) -> bool {
    let program = match std::env::var("BROWSER") {
        Ok(b) if !b.trim().is_empty() => b,
        _ if cfg!(target_os = "macos") => "open".into(),
        _ if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some() => {
            "xdg-open".into()
        }
        _ => return false,
    };
    std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// The OAuth2 table of an account that has one.
pub fn table(account: &Account) -> Option<&OAuth2> {
    match &account.password {
        PasswordSource::OAuth2(o) => Some(o),
        _ => None,
    }
}

/// Run the flow for `account` and keep its tokens: where they are kept.
pub async fn authorize(account: &Account, o: &OAuth2, device: bool) -> Result<String, OAuthError> {
    let http = Http::new(None)?;
    let (tokens, _) = if device {
        flow::authorize_device(o, &http, &Terminal).await?
    } else {
        flow::authorize_code(o, &http, &account.username, &Terminal).await?
    };
    let store = TokenStore::default();
    flow::keep(&store, &account.name, &tokens)?;
    Ok(store.location(&account.name))
}

/// An OAuth2 failure as the user reads it, and its exit code.
pub fn report(account: &str, e: &OAuthError) -> u8 {
    let (cause, fix) = e.explain(account);
    eprintln!("pillarbox: {e}\n  why: {cause}\n  fix: {fix}");
    e.exit_code()
}

/// `pillarbox account authorize NAME [--device]`.
pub fn command(account: &Account, device: bool) -> Result<u8> {
    let Some(o) = table(account) else {
        bail!(
            "account {} has no [accounts.{}.oauth2] table: add one (provider, client_id, ...) or give it a token_command",
            account.name,
            account.name
        );
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match rt.block_on(authorize(account, o, device)) {
        Ok(place) => {
            println!(
                "Authorized: the tokens of {} are kept in {place} (readable only by you) and refreshed when \
                 needed. `pillarbox fetch {}` logs in with them.",
                account.name, account.name
            );
            Ok(0)
        }
        Err(e) => Ok(report(&account.name, &e)),
    }
}

/// How `account show` describes the tokens of an OAuth2 account.
pub fn describe(account: &Account, o: &OAuth2) -> String {
    let store = TokenStore::default();
    let state = match store.load(&account.name) {
        Ok(Some(t)) => format!(
            "authorized; tokens in {}{}",
            store.location(&account.name),
            if t.refresh_token.is_some() { ", refreshed when needed" } else { ", with no refresh token" }
        ),
        Ok(None) => format!("not authorized yet: run `pillarbox account authorize {}`", account.name),
        Err(e) => e,
    };
    format!("OAuth2 tokens from {} (client {}): {state}", o.provider.as_str(), o.client_id)
}

/// A provider that requires OAuth2 for POP, known by the address's domain or the server found
/// for it: its provider, and its POP3 server (implicit TLS on 995).
pub fn preset(domain: &str, host: Option<&str>) -> Option<(OAuth2Provider, &'static str)> {
    let d = domain.to_ascii_lowercase();
    let (label, rest) = d.split_once('.').unwrap_or((&d, ""));
    if ["gmail.com", "googlemail.com"].contains(&d.as_str()) {
        return Some((OAuth2Provider::Google, "pop.gmail.com"));
    }
    // Outlook.com's consumer domains, in every country's spelling (outlook.de, hotmail.co.uk...):
    // the name, then com, a country code, or co./com. and a country code.
    let country = |s: &str| s.len() == 2 && s.chars().all(|c| c.is_ascii_lowercase());
    let public_suffix = rest == "com"
        || country(rest)
        || rest.split_once('.').is_some_and(|(a, b)| ["co", "com"].contains(&a) && country(b));
    if ["outlook", "hotmail", "live", "msn", "windowslive"].contains(&label) && public_suffix {
        return Some((OAuth2Provider::Microsoft, "outlook.office365.com"));
    }
    // A Microsoft 365 domain: its autodiscovery names Microsoft's server.
    let host = host.map(str::to_ascii_lowercase);
    if host.as_deref().is_some_and(|h| h == "outlook.office365.com" || h.ends_with(".outlook.com")) {
        return Some((OAuth2Provider::Microsoft, "outlook.office365.com"));
    }
    if host.as_deref() == Some("pop.gmail.com") {
        return Some((OAuth2Provider::Google, "pop.gmail.com"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_that_require_oauth2_are_known() {
        assert_eq!(preset("gmail.com", None), Some((OAuth2Provider::Google, "pop.gmail.com")));
        assert_eq!(preset("Hotmail.co.uk", None).map(|p| p.0), Some(OAuth2Provider::Microsoft));
        assert_eq!(preset("outlook.com", None).map(|p| p.1), Some("outlook.office365.com"));
        assert_eq!(preset("live.com", None).map(|p| p.0), Some(OAuth2Provider::Microsoft));
        assert_eq!(preset("contoso.com", Some("outlook.office365.com")).map(|p| p.0), Some(OAuth2Provider::Microsoft));
        assert_eq!(preset("example.org", Some("pop.example.org")), None);
        assert_eq!(preset("outlook.example.org", None), None, "a company's own outlook host is not Outlook.com");
    }
}
