//! Reading a domain's mail settings the way Thunderbird does (its autoconfig files): at
//! `autoconfig.DOMAIN`, at the domain's own well-known URL, then at the domain that runs its
//! mail (behind the MX record), over HTTPS, and at `autoconfig.DOMAIN` over plain HTTP last.
//! Only POP3 servers with TLS are taken. What the answer is worth depends on where it came
//! from: over HTTPS from the address's own domain it is the domain's word; from the MX's domain
//! or over plain HTTP anyone on the path could have written it, so a server outside the
//! address's domain found there is used only when the user confirms it.

use std::net::SocketAddr;
use std::time::Duration;

use pillarbox_accounts::TlsMode;

use crate::discover::inside_domain;
use crate::dns::Resolver;

/// A POP3 server an autoconfig file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3 {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// The user name, with the file's placeholders filled in.
    pub username: Option<String>,
}

/// The POP3 servers (with TLS: SSL, then STARTTLS, in the file's order) of an autoconfig file
/// for `address`.
pub fn parse(xml: &str, address: &str) -> Result<Vec<Pop3>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "clientConfig" {
        return Err("not an autoconfig file (no clientConfig)".into());
    }
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    let text = |n: roxmltree::Node, tag: &str| {
        n.children().find(|c| c.has_tag_name(tag)).and_then(|c| c.text()).map(|t| t.trim().to_owned())
    };
    let mut out = Vec::new();
    for server in root.descendants().filter(|n| n.has_tag_name("incomingServer") && n.attribute("type") == Some("pop3"))
    {
        let (Some(host), Some(port)) = (text(server, "hostname"), text(server, "port").and_then(|p| p.parse().ok()))
        else {
            continue;
        };
        let tls = match text(server, "socketType").as_deref() {
            Some("SSL") => TlsMode::Implicit,
            Some("STARTTLS") => TlsMode::Starttls,
            // Plain POP3 would send the password in cleartext: not offered to the user.
            _ => continue,
        };
        let host = host.replace("%EMAILDOMAIN%", domain).trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.contains('%') {
            continue;
        }
        let username = text(server, "username").map(|u| {
            u.replace("%EMAILADDRESS%", address).replace("%EMAILLOCALPART%", local).replace("%EMAILDOMAIN%", domain)
        });
        out.push(Pop3 { host, port, tls, username });
    }
    out.sort_by_key(|p| p.tls != TlsMode::Implicit);
    Ok(out)
}

/// Where an autoconfig file was found, and whether its servers need the user's confirmation.
#[derive(Debug, Clone)]
pub struct Answer {
    pub url: String,
    pub servers: Vec<Pop3>,
    /// From the address's own domain over HTTPS: its servers are trusted wherever they are.
    pub authoritative: bool,
}

impl Answer {
    /// Whether `server` may be used without asking the user (see the module's documentation).
    pub fn needs_confirmation(&self, server: &Pop3, domain: &str) -> bool {
        !self.authoritative && !inside_domain(&server.host, domain)
    }
}

/// The longest autoconfig file read.
const MAX_FILE: usize = 64 * 1024;

async fn fetch(resolver: &Resolver, url: &str, timeout: Duration) -> Result<String, String> {
    let parsed = url.split("://").nth(1).ok_or("not a URL")?;
    let host = parsed.split(['/', ':', '?']).next().unwrap_or("");
    let https = url.starts_with("https://");
    let ips = resolver.addresses(host).await.map_err(|e| e.to_string())?;
    let port = if https { 443 } else { 80 };
    let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
    let http = pillarbox_oauth::Http::reaching(host, &addrs).map_err(|e| e.to_string())?;
    let (status, body) = tokio::time::timeout(timeout, http.get_text(url, MAX_FILE))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    Ok(body)
}

/// Look for the settings of `address` (whose domain is `domain`) in Thunderbird's order, all
/// asked at once: the answers found, best first, and what each place said.
pub async fn lookup(address: &str, domain: &str, resolver: &Resolver, timeout: Duration) -> (Vec<Answer>, Vec<String>) {
    let query = format!("emailaddress={}", address.replace('@', "%40"));
    let mut places = vec![
        (format!("https://autoconfig.{domain}/mail/config-v1.1.xml?{query}"), true),
        (format!("https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml?{query}"), true),
    ];
    // The domain that runs the domain's mail (mx1.mail.example.net runs mail.example.net):
    // its autoconfig, if it is another domain.
    if let Ok(mx) = resolver.mx(domain).await
        && let Some(first) = mx.first()
        && let Some((_, parent)) = first.split_once('.')
        && parent.contains('.')
        && !inside_domain(parent, domain)
    {
        places.push((format!("https://autoconfig.{parent}/mail/config-v1.1.xml?{query}"), false));
    }
    places.push((format!("http://autoconfig.{domain}/mail/config-v1.1.xml?{query}"), false));
    let tasks: Vec<_> = places
        .into_iter()
        .map(|(url, own)| {
            let resolver = resolver.clone();
            tokio::spawn(async move {
                let got = fetch(&resolver, &url, timeout).await;
                (url, own, got)
            })
        })
        .collect();
    let (mut answers, mut notes) = (Vec::new(), Vec::new());
    for task in tasks {
        let Ok((url, own, got)) = task.await else { continue };
        let shown = url.split('?').next().unwrap_or(&url).to_owned();
        match got.and_then(|xml| parse(&xml, address)) {
            Ok(servers) if servers.is_empty() => notes.push(format!("{shown}: no POP3 server with TLS in it")),
            Ok(servers) => {
                notes.push(format!(
                    "{shown}: names {}",
                    servers.iter().map(|s| format!("{}:{}", s.host, s.port)).collect::<Vec<_>>().join(", ")
                ));
                answers.push(Answer { url: shown, servers, authoritative: own });
            }
            Err(e) => notes.push(format!("{shown}: {e}")),
        }
    }
    (answers, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"<?xml version="1.0"?>
<clientConfig version="1.1"><emailProvider id="example.com"><domain>example.com</domain>
<incomingServer type="imap"><hostname>imap.example.com</hostname><port>993</port><socketType>SSL</socketType><username>%EMAILADDRESS%</username></incomingServer>
<incomingServer type="pop3"><hostname>pop.%EMAILDOMAIN%</hostname><port>110</port><socketType>STARTTLS</socketType><username>%EMAILLOCALPART%</username></incomingServer>
<incomingServer type="pop3"><hostname>pop.example.com</hostname><port>995</port><socketType>SSL</socketType><username>%EMAILADDRESS%</username></incomingServer>
<incomingServer type="pop3"><hostname>pop.example.com</hostname><port>110</port><socketType>plain</socketType><username>x</username></incomingServer>
<outgoingServer type="smtp"><hostname>smtp.example.com</hostname><port>587</port><socketType>STARTTLS</socketType></outgoingServer>
</emailProvider></clientConfig>"#;

    #[test]
    fn pop3_servers_with_tls_implicit_first_placeholders_filled() {
        let found = parse(FILE, "me@example.com").expect("parses");
        assert_eq!(
            found,
            [
                Pop3 {
                    host: "pop.example.com".into(),
                    port: 995,
                    tls: TlsMode::Implicit,
                    username: Some("me@example.com".into())
                },
                Pop3 { host: "pop.example.com".into(), port: 110, tls: TlsMode::Starttls, username: Some("me".into()) },
            ]
        );
        assert!(parse("<html>no</html>", "me@example.com").is_err());
        assert!(parse("not xml <", "me@example.com").is_err());
    }

    #[test]
    fn only_the_domains_own_https_answer_may_send_the_password_elsewhere() {
        let server = Pop3 { host: "pop.provider.test".into(), port: 995, tls: TlsMode::Implicit, username: None };
        let own = Answer { url: "https://autoconfig.example.com/".into(), servers: vec![], authoritative: true };
        let mx = Answer { authoritative: false, ..own.clone() };
        assert!(!own.needs_confirmation(&server, "example.com"));
        assert!(mx.needs_confirmation(&server, "example.com"));
        let inside = Pop3 { host: "pop.example.com".into(), ..server };
        assert!(!mx.needs_confirmation(&inside, "example.com"));
    }
}
