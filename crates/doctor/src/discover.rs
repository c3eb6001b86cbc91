//! Finding an address's POP3 server: the domain's autoconfig files first (Thunderbird's order,
//! see [`crate::autoconfig`]), then SRV records (RFC 6186, implicit TLS preferred as RFC 8314
//! asks), then the usual names, each probed on 995 (implicit TLS) before 110 (STLS). A probe
//! only connects and looks at the greeting (or the TLS handshake); it never logs in.

use std::net::SocketAddr;
use std::time::Duration;

use crate::dns::{DnsError, Resolver};
use pillarbox_accounts::{Account, TlsMode};
use pillarbox_fetch::conn::{self, Conn};
use pillarbox_fetch::tls;

/// A server that answered like a POP3 server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// How it was found, for the user.
    pub via: String,
    /// Named by an SRV record in another domain than the address's. Without DNSSEC anyone on
    /// the path can forge that record and send the password elsewhere (RFC 6186 section 6), so
    /// such a server is used only when the user confirms it. The same for a server outside the
    /// domain named by an autoconfig file that did not come over HTTPS from the domain itself.
    pub needs_confirmation: bool,
    /// The user name an autoconfig file gives.
    pub username: Option<String>,
}

/// Whether `host` is `domain` or a name inside it (`pop.example.com` in `example.com`).
pub fn inside_domain(host: &str, domain: &str) -> bool {
    let (host, domain) =
        (host.trim_end_matches('.').to_ascii_lowercase(), domain.trim_end_matches('.').to_ascii_lowercase());
    host == domain || host.ends_with(&format!(".{domain}"))
}

/// What discovery tried, found and ruled out, in order.
#[derive(Debug, Default)]
pub struct Discovery {
    pub found: Vec<Found>,
    pub notes: Vec<String>,
}

/// Probe the servers for `address`, whose domain is `domain` (the part after @).
pub async fn discover(address: &str, domain: &str, resolver: &Resolver, timeout: Duration) -> Discovery {
    let mut d = Discovery::default();
    let (answers, notes) = crate::autoconfig::lookup(address, domain, resolver, timeout).await;
    d.notes.extend(notes.into_iter().map(|n| format!("autoconfig {n}")));
    for answer in &answers {
        for server in &answer.servers {
            match probe(resolver, &server.host, server.port, server.tls, timeout).await {
                Ok(()) => d.found.push(Found {
                    host: server.host.clone(),
                    port: server.port,
                    tls: server.tls,
                    via: format!("the autoconfig file at {}", answer.url),
                    needs_confirmation: answer.needs_confirmation(server, domain),
                    username: server.username.clone(),
                }),
                Err(why) => d.notes.push(format!("{}:{} (from {}): {why}", server.host, server.port, answer.url)),
            }
        }
    }
    if !d.found.is_empty() {
        return d;
    }
    for (service, tls) in [("_pop3s._tcp", TlsMode::Implicit), ("_pop3._tcp", TlsMode::Starttls)] {
        let name = format!("{service}.{domain}");
        match resolver.srv(&name).await {
            Ok(records) if records.is_empty() => {
                d.notes.push(format!("{name}: the domain says there is no such service"))
            }
            Ok(records) => {
                for r in records {
                    let via = format!("SRV {name}");
                    match probe(resolver, &r.target, r.port, tls, timeout).await {
                        Ok(()) => {
                            d.notes.push(format!("{name}: {}:{} answers ({})", r.target, r.port, mode_name(tls)));
                            let needs_confirmation = !inside_domain(&r.target, domain);
                            d.found.push(Found {
                                host: r.target,
                                port: r.port,
                                tls,
                                via,
                                needs_confirmation,
                                username: None,
                            });
                        }
                        Err(why) => d.notes.push(format!("{name}: {}:{}: {why}", r.target, r.port)),
                    }
                }
            }
            Err(e) => d.notes.push(format!("{name}: {}", dns_note(&e))),
        }
    }
    if !d.found.is_empty() {
        return d;
    }
    let names = [format!("pop.{domain}"), format!("pop3.{domain}"), format!("mail.{domain}"), domain.to_owned()];
    let mut tasks = Vec::new();
    for (port, tls) in [(995, TlsMode::Implicit), (110, TlsMode::Starttls)] {
        for host in &names {
            let host = host.clone();
            let resolver = resolver.clone();
            tasks.push((
                host.clone(),
                port,
                tls,
                tokio::spawn(async move { probe(&resolver, &host, port, tls, timeout).await }),
            ));
        }
    }
    for (host, port, tls, task) in tasks {
        match task.await {
            Ok(Ok(())) => {
                d.notes.push(format!("{host}:{port} answers ({})", mode_name(tls)));
                d.found.push(Found {
                    host,
                    port,
                    tls,
                    via: "the usual server names".into(),
                    needs_confirmation: false,
                    username: None,
                });
            }
            Ok(Err(why)) => d.notes.push(format!("{host}:{port}: {why}")),
            Err(e) => d.notes.push(format!("{host}:{port}: {e}")),
        }
    }
    d
}

pub fn mode_name(tls: TlsMode) -> &'static str {
    match tls {
        TlsMode::Implicit => "implicit TLS",
        TlsMode::Starttls => "STLS",
        TlsMode::None => "no TLS",
    }
}

fn dns_note(e: &DnsError) -> String {
    match e {
        DnsError::NoSuchName(_) => "no such name".into(),
        DnsError::NoRecord(_, kind) => format!("no {kind} record"),
        DnsError::Failed(_, m) => format!("DNS failed ({m})"),
    }
}

/// Does `host:port` speak POP3 in `tls` mode? (A certificate that does not verify still counts:
/// the account check explains it.)
async fn probe(resolver: &Resolver, host: &str, port: u16, tls: TlsMode, timeout: Duration) -> Result<(), String> {
    let ips = resolver.addresses(host).await.map_err(|e| dns_note(&e))?;
    let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
    let tcp = conn::connect(&addrs, timeout).await.map_err(|e| match e {
        conn::ConnError::Connect { source, .. } => source.to_string(),
        other => other.to_string(),
    })?;
    let probe = Account::probe(host, port, TlsMode::Implicit);
    let (connector, presented) = tls::recording_connector(&probe)?;
    let mut c = Conn::new(tcp);
    match tls {
        TlsMode::Implicit => match within(timeout, c.start_tls(&connector, host)).await? {
            Ok(()) => within(timeout, c.greet()).await?.map_err(|e| format!("no POP3 greeting after TLS: {e}")),
            Err(_) if !presented.chain().is_empty() => Ok(()),
            Err(e) => Err(format!("no TLS: {e}")),
        },
        _ => {
            within(timeout, c.greet()).await?.map_err(|e| format!("no POP3 greeting: {e}"))?;
            if c.capa.has("STLS") { Ok(()) } else { Err("POP3 without STLS (not used: it would be cleartext)".into()) }
        }
    }
}

async fn within<T>(t: Duration, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(t, f).await.map_err(|_| "no answer in time".to_owned())
}

#[cfg(test)]
mod tests {
    use super::inside_domain;

    #[test]
    fn which_servers_are_inside_the_domain() {
        assert!(inside_domain("pop.example.com", "example.com"));
        assert!(inside_domain("Example.COM.", "example.com"));
        assert!(!inside_domain("pop.example.com.evil.test", "example.com"));
        assert!(!inside_domain("badexample.com", "example.com"));
        assert!(!inside_domain("pop.gmail.com", "example.com"));
    }
}
