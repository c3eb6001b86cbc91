//! `pillarbox check`: walk an account's path step by step (name, connection, TLS, certificate,
//! capabilities, login, mailbox, local store) and say for each step whether it works, and when it
//! does not, why and what to change. Nothing is deleted or marked on the server: the session only
//! reads its listing and ends with QUIT.

use pillarbox_proto::client::ClientCommand;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustls::{AlertDescription, CertificateError};
use serde::Serialize;

use crate::dns::{DnsError, Resolver};
use pillarbox_accounts::{Account, Deliver, Keep, TlsMode};
use pillarbox_fetch::conn::{self, Capa, Conn, ConnError};
use pillarbox_fetch::journal::Journal;
use pillarbox_fetch::tls::{self, Presented};

/// The checks, in the order they run and are shown.
pub const CHECKS: [&str; 9] =
    ["dns", "connect", "tls_mode", "starttls", "certificate", "capabilities", "auth", "mailbox", "local"];

/// Assumed link speed for the download estimate: round trips are measured, bandwidth is not.
const ASSUMED_BYTES_PER_SEC: f64 = 12_500_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Skip => "SKIP",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub status: Status,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn pass(id: &'static str, summary: impl Into<String>) -> Self {
        Self { id, status: Status::Pass, summary: summary.into(), cause: None, fix: None }
    }

    fn skip(id: &'static str, summary: impl Into<String>) -> Self {
        Self { id, status: Status::Skip, summary: summary.into(), cause: None, fix: None }
    }

    fn problem(
        id: &'static str,
        status: Status,
        summary: impl Into<String>,
        cause: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self { id, status, summary: summary.into(), cause: Some(cause.into()), fix: Some(fix.into()) }
    }

    fn fail(id: &'static str, summary: impl Into<String>, cause: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::problem(id, Status::Fail, summary, cause, fix)
    }

    fn warn(id: &'static str, summary: impl Into<String>, cause: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::problem(id, Status::Warn, summary, cause, fix)
    }
}

/// How the login went, for `account add` (which tries user-name variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    LoggedIn,
    /// The server refused the user name or password.
    Refused,
    /// Anything else (not reached, temporary, mechanism...).
    Other,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    #[serde(skip)]
    pub auth: Option<AuthOutcome>,
    /// Messages on the server not yet downloaded for this account, and their octets.
    #[serde(skip)]
    pub new_mail: Option<(usize, u64)>,
}

impl Report {
    pub fn worst(&self) -> Status {
        self.findings.iter().map(|f| f.status).max().unwrap_or(Status::Pass)
    }

    pub fn failed(&self) -> bool {
        self.worst() == Status::Fail
    }

    /// The report of an account whose configuration keeps it from being used (nothing else is
    /// checked: a doctor still examines, and says what is wrong).
    pub fn config_failure(cause: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            findings: vec![Finding::fail("config", "the account cannot be used as configured", cause, fix)],
            auth: None,
            new_mail: None,
        }
    }
}

pub struct Options<'a> {
    pub resolver: &'a Resolver,
    /// Longest wait for each network step.
    pub timeout: Duration,
    /// Where `pillarbox fetch` keeps its journals, to count new messages and see its lock.
    pub state: Option<pillarbox_fetch::state::StateDirs>,
    /// The accounts file, whose permissions are checked.
    pub accounts_file: Option<PathBuf>,
    /// Check the local destination (false when it is not known, e.g. `check --host`).
    pub local: bool,
    /// The password itself, when it was typed and is not saved anywhere yet (`account add`):
    /// used instead of the account's password source.
    pub password: Option<&'a pillarbox_proto::Secret<Vec<u8>>>,
}

/// Run every check for `account`.
pub async fn run(account: &Account, opts: &Options<'_>) -> Report {
    let mut report = Report { findings: Vec::new(), auth: None, new_mail: None };
    Remote { account, opts, report: &mut report }.run().await;
    if opts.local {
        local(account, opts, &mut report);
    }
    for id in CHECKS {
        if !report.findings.iter().any(|f| f.id == id) {
            let why = if id == "local" { "the local destination is not known" } else { "an earlier check failed" };
            report.findings.push(Finding::skip(id, format!("not checked: {why}")));
        }
    }
    report.findings.sort_by_key(|f| CHECKS.iter().position(|c| *c == f.id));
    report
}

struct Remote<'a, 'r> {
    account: &'a Account,
    opts: &'a Options<'a>,
    report: &'r mut Report,
}

/// What the certificate check learned, to be reported once the TLS step is over.
struct TlsOutcome {
    presented: Vec<Vec<u8>>,
    error: Option<ConnError>,
}

impl Remote<'_, '_> {
    fn add(&mut self, f: Finding) {
        self.report.findings.push(f);
    }

    async fn run(&mut self) {
        let Some(addrs) = self.dns().await else { return };
        let Some((tcp, addr, rtt)) = self.connect(&addrs).await else { return };
        let a = self.account;
        let (connector, presented) = match tls::recording_connector(a) {
            Ok(c) => c,
            Err(e) => {
                self.add(Finding::fail(
                    "certificate",
                    "the TLS settings cannot be used",
                    e,
                    "check that ca_file names a readable PEM file of CA certificates",
                ));
                return;
            }
        };
        let mut conn = Conn::new(tcp);
        let t = self.opts.timeout;
        match a.tls {
            TlsMode::Implicit => {
                self.add(Finding::skip("starttls", "not used: the connection is encrypted from the first byte"));
                let r = timed(t, conn.start_tls(&connector, &a.host)).await;
                if let Err(e) = r {
                    if !self.mismatch_implicit(addr, &e, &presented).await {
                        self.certificate(TlsOutcome { presented: der(&presented), error: Some(e) });
                    }
                    return;
                }
                if !self.greeting(&mut conn).await {
                    return;
                }
                let (version, suite) = conn.tls_parameters().unwrap_or_default();
                self.add(Finding::pass("tls_mode", format!("implicit TLS on port {}: {version}, {suite}", a.port)));
            }
            TlsMode::Starttls | TlsMode::None => {
                // A port that speaks TLS first says nothing: after a short wait, ask whether that
                // is why, and otherwise keep waiting for a slow greeting.
                let short = t.min(Duration::from_secs(3));
                let mut greeted = timed(short, conn.greet()).await;
                if matches!(greeted, Err(ConnError::Timeout(_))) && short < t {
                    if tls_spoken(addr, &a.host, t).await {
                        self.mismatch_plain(addr, ConnError::Timeout(short)).await;
                        return;
                    }
                    greeted = timed(t - short, conn.greet()).await;
                }
                match greeted {
                    Ok(()) => self.add(Finding::pass(
                        "tls_mode",
                        format!("plain POP3 greeting on port {}: {}", a.port, clip(&conn.greeting)),
                    )),
                    Err(e) => {
                        self.mismatch_plain(addr, e).await;
                        return;
                    }
                }
                if a.tls == TlsMode::None {
                    self.add(Finding::warn(
                        "starttls",
                        "no TLS at all (tls = \"none\")",
                        "the password and every message cross the network in cleartext, readable by anyone on the path",
                        "use tls = \"implicit\" (port 995) or tls = \"starttls\" (port 110)",
                    ));
                    self.add(Finding::skip("certificate", "not checked: no TLS"));
                } else {
                    if !conn.capa.has("STLS") {
                        let offered = if conn.capa.lines.is_empty() {
                            "the server does not answer CAPA, so it offers no STLS".to_owned()
                        } else {
                            format!("its capabilities are: {}", capa_summary(&conn.capa))
                        };
                        self.add(Finding::fail(
                            "starttls",
                            "the server does not offer STLS",
                            offered,
                            "Pillarbox never falls back to plaintext: use implicit TLS on port 995 if the server \
                             has it (tls = \"implicit\", port = 995), or ask the provider to enable STLS",
                        ));
                        return;
                    }
                    if let Err(e) = timed(t, conn.stls(&connector, &a.host)).await {
                        let tls_failed = matches!(e, ConnError::Tls { .. });
                        if tls_failed {
                            self.add(Finding::pass("starttls", "STLS offered and accepted"));
                            self.certificate(TlsOutcome { presented: der(&presented), error: Some(e) });
                        } else {
                            self.add(Finding::fail(
                                "starttls",
                                "STLS did not work",
                                e.to_string(),
                                "try implicit TLS on port 995 (tls = \"implicit\", port = 995)",
                            ));
                        }
                        return;
                    }
                    let (version, suite) = conn.tls_parameters().unwrap_or_default();
                    self.add(Finding::pass("starttls", format!("STLS accepted: {version}, {suite}")));
                }
            }
        }
        if conn.tls {
            self.certificate(TlsOutcome { presented: der(&presented), error: None });
        }
        let capa_before = conn.capa.clone();
        let logged_in = self.auth(&mut conn).await;
        if logged_in {
            conn.refresh_capa().await;
        }
        self.capabilities(&capa_before, &conn.capa);
        if logged_in {
            self.mailbox(&mut conn, rtt).await;
            let _ = timed(t, conn.command(ClientCommand::Quit)).await;
        }
    }

    async fn dns(&mut self) -> Option<Vec<SocketAddr>> {
        let host = &self.account.host;
        let port = self.account.port;
        match self.opts.resolver.addresses(host).await {
            Ok(ips) => {
                let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
                let summary = if list.len() == 1 && list[0] == host.trim_matches(['[', ']']) {
                    format!("{host} is an address: nothing to look up")
                } else {
                    format!("{host} resolves to {}", list.join(", "))
                };
                self.add(Finding::pass("dns", summary));
                Some(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
            }
            Err(DnsError::NoSuchName(_)) => {
                self.add(Finding::fail(
                    "dns",
                    format!("{host} does not exist"),
                    "the DNS answered NXDOMAIN: no such name (a typo, or a server name that was never set up)",
                    format!(
                        "check the spelling of the server name; the provider's help pages give it (often pop.{0}), \
                         or let `pillarbox account add ADDRESS` find it",
                        domain_of(host)
                    ),
                ));
                None
            }
            Err(DnsError::NoRecord(..)) => {
                self.add(Finding::fail(
                    "dns",
                    format!("{host} has no address"),
                    "the name exists in DNS but has no A or AAAA record, so it names no server",
                    format!(
                        "this is probably not the mail server's name: try pop.{0} or the name in the provider's help \
                         pages",
                        domain_of(host)
                    ),
                ));
                None
            }
            Err(DnsError::Failed(_, e)) => {
                self.add(Finding::fail(
                    "dns",
                    format!("cannot look up {host}"),
                    format!("the DNS resolver did not answer: {e}"),
                    "check the network connection and the resolver settings (/etc/resolv.conf), then try again",
                ));
                None
            }
        }
    }

    async fn connect(&mut self, addrs: &[SocketAddr]) -> Option<(tokio::net::TcpStream, SocketAddr, Duration)> {
        let port = self.account.port;
        let mut failures = Vec::new();
        for addr in addrs {
            let start = Instant::now();
            match conn::connect(std::slice::from_ref(addr), self.opts.timeout).await {
                Ok(tcp) => {
                    let rtt = start.elapsed();
                    self.add(Finding::pass("connect", format!("connected to {addr} in {} ms", rtt.as_millis())));
                    return Some((tcp, *addr, rtt));
                }
                Err(ConnError::Connect { source, .. }) => failures.push((*addr, source)),
                Err(e) => failures.push((*addr, std::io::Error::other(e.to_string()))),
            }
        }
        let (addr, e) = failures.first()?;
        use std::io::ErrorKind as K;
        let f = match e.kind() {
            K::ConnectionRefused => Finding::fail(
                "connect",
                format!("{addr}: connection refused"),
                format!("nothing accepts connections on port {port} there: a wrong port, or the POP3 service is down"),
                "POP3 uses port 995 with implicit TLS or port 110 with STLS: check the port and tls settings \
                 against the provider's; if they are right, the server is down",
            ),
            K::TimedOut => Finding::fail(
                "connect",
                format!("{addr}: no answer within {} s", self.opts.timeout.as_secs()),
                "a firewall drops the connection (on this network, at the provider, or on this computer), or \
                 the address is wrong",
                format!(
                    "check the address and port ({port}); some networks block mail ports: try another network, or \
                     {}",
                    if port == 995 { "port 110 with STLS (tls = \"starttls\")" } else { "port 995 with implicit TLS" }
                ),
            ),
            K::NetworkUnreachable | K::HostUnreachable => Finding::fail(
                "connect",
                format!("{addr}: unreachable"),
                format!("no route to {addr}: this computer is offline, or has no IPv4/IPv6 route to it ({e})"),
                "check the network connection",
            ),
            _ => Finding::fail(
                "connect",
                format!("cannot connect to {addr}"),
                e.to_string(),
                "check the host and port, and the network connection",
            ),
        };
        self.add(f);
        None
    }

    /// Implicit TLS failed: when the port speaks plain POP3, say so (and return true).
    async fn mismatch_implicit(&mut self, addr: SocketAddr, e: &ConnError, presented: &Presented) -> bool {
        let certificate_seen = !presented.chain().is_empty();
        if certificate_seen {
            self.add(Finding::pass("tls_mode", format!("the server speaks TLS on port {}", self.account.port)));
            return false;
        }
        if let Some(greeting) = plain_greeting(addr, self.opts.timeout).await {
            self.add(Finding::fail(
                "tls_mode",
                format!("port {} speaks plain POP3, not implicit TLS", self.account.port),
                format!(
                    "the account says tls = \"implicit\", but the server greeted in plaintext: {}",
                    clip(&greeting)
                ),
                format!(
                    "port and TLS mode don't match: use implicit TLS on 995 or STLS on 110 (for port {}: \
                     tls = \"starttls\")",
                    self.account.port
                ),
            ));
            return true;
        }
        let version = matches!(
            e,
            ConnError::Tls {
                cause: Some(
                    rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
                        | rustls::Error::PeerIncompatible(_)
                ),
                ..
            }
        );
        if version {
            self.add(Finding::pass("tls_mode", format!("the server speaks TLS on port {}", self.account.port)));
            return false;
        }
        self.add(Finding::fail(
            "tls_mode",
            format!("no TLS and no POP3 on port {}", self.account.port),
            format!("the TLS handshake failed ({e}), and the port sends no POP3 greeting either"),
            "check the port: POP3 is 995 with implicit TLS or 110 with STLS (993 and 143 are IMAP)",
        ));
        true
    }

    /// No greeting on a port used in plaintext: TLS from the first byte is the usual reason.
    async fn mismatch_plain(&mut self, addr: SocketAddr, e: ConnError) {
        let port = self.account.port;
        if tls_spoken(addr, &self.account.host, self.opts.timeout).await {
            let mode = if self.account.tls == TlsMode::Starttls { "starttls" } else { "none" };
            self.add(Finding::fail(
                "tls_mode",
                format!("port {port} expects TLS from the first byte (implicit TLS)"),
                format!(
                    "the account says tls = \"{mode}\", but the server sent no POP3 greeting ({e}) and answers a \
                     TLS handshake"
                ),
                format!(
                    "port and TLS mode don't match: use implicit TLS on 995 or STLS on 110 (for port {port}: \
                     tls = \"implicit\")"
                ),
            ));
            return;
        }
        let imap = e.to_string().contains("* OK");
        self.add(Finding::fail(
            "tls_mode",
            format!("no POP3 greeting on port {port}"),
            if imap { format!("this is an IMAP server, not POP3: {e}") } else { e.to_string() },
            "check the port: POP3 is 995 with implicit TLS or 110 with STLS (993 and 143 are IMAP)",
        ));
    }

    /// After TLS, the POP3 greeting; false (with a finding) when there is none.
    async fn greeting(&mut self, conn: &mut Conn) -> bool {
        match timed(self.opts.timeout, conn.greet()).await {
            Ok(()) => true,
            Err(e) => {
                let imap = e.to_string().contains("* OK");
                self.add(Finding::fail(
                    "tls_mode",
                    "TLS works, but no POP3 greeting follows",
                    if imap { format!("this is an IMAP server, not POP3: {e}") } else { e.to_string() },
                    "check the port: POP3 is 995 with implicit TLS (993 is IMAP)",
                ));
                false
            }
        }
    }

    fn certificate(&mut self, outcome: TlsOutcome) {
        let a = self.account;
        let cert = outcome.presented.first().map(|d| CertInfo::parse(d));
        let fp = outcome.presented.first().map(|d| tls::fingerprint(d)).unwrap_or_default();
        let Some(error) = outcome.error else {
            let f = match (&cert, a.fingerprint.is_some()) {
                (_, true) => Finding::pass("certificate", format!("the server's certificate is the pinned one ({fp})")),
                (Some(c), false) => {
                    let days = c.days_left();
                    let summary = format!(
                        "valid for {}: issued by {}, until {} ({days} days)",
                        a.host,
                        c.issuer,
                        pillarbox_os::date::rfc5322(c.not_after.max(0).unsigned_abs())
                    );
                    if days < 14 {
                        Finding::warn(
                            "certificate",
                            summary,
                            format!("the certificate expires in {days} days"),
                            "nothing to do now; the server's admin should renew it soon",
                        )
                    } else {
                        Finding::pass("certificate", summary)
                    }
                }
                (None, false) => Finding::pass("certificate", "verified"),
            };
            self.add(f);
            return;
        };
        let pin_fix = format!(
            "only if you have checked this fingerprint with the server's admin, pin the certificate: \
             tls_fingerprint = \"{fp}\" (or --tls-fingerprint {fp})"
        );
        let cause = match &error {
            ConnError::Tls { cause, .. } => cause.clone(),
            _ => None,
        };
        let now = pillarbox_os::unix_now();
        let f = match cause {
            Some(rustls::Error::InvalidCertificate(ce)) => match ce {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    let until = cert.as_ref().map(|c| c.not_after).unwrap_or_default();
                    Finding::fail(
                        "certificate",
                        "the server's certificate has expired",
                        format!(
                            "it was valid until {}; it is now {}",
                            pillarbox_os::date::rfc5322(until.max(0).unsigned_abs()),
                            pillarbox_os::date::rfc5322(now)
                        ),
                        format!("the server's admin must renew it. Until then, {pin_fix}"),
                    )
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    let from = cert.as_ref().map(|c| c.not_before).unwrap_or_default();
                    Finding::fail(
                        "certificate",
                        "the server's certificate is not valid yet",
                        format!(
                            "it is valid from {}, and this computer's clock says {}",
                            pillarbox_os::date::rfc5322(from.max(0).unsigned_abs()),
                            pillarbox_os::date::rfc5322(now)
                        ),
                        "check this computer's date and time; if they are right, the server's certificate is wrong",
                    )
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    let names = cert.as_ref().map(|c| c.names.clone()).unwrap_or_default();
                    let by_ip = a.host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok();
                    let covers = if names.is_empty() { "no host name".to_owned() } else { names.join(", ") };
                    let usable = names.iter().find(|n| !n.starts_with("*.")).cloned();
                    Finding::fail(
                        "certificate",
                        format!("the server's certificate is not for {}", a.host),
                        if by_ip {
                            format!("you connect by IP address, and the certificate covers names, not it: {covers}")
                        } else {
                            format!("the certificate covers: {covers}")
                        },
                        match usable {
                            Some(n) => format!("connect by a name the certificate covers: host = \"{n}\" (--host {n})"),
                            None => format!("connect by a name the certificate covers ({covers})"),
                        },
                    )
                }
                CertificateError::Revoked => Finding::fail(
                    "certificate",
                    "the server's certificate was revoked",
                    "its issuer withdrew it: it may have been stolen",
                    "do not connect; tell the server's admin",
                ),
                _ => {
                    let self_signed = cert.as_ref().is_some_and(|c| c.self_signed);
                    let issuer = cert.as_ref().map(|c| c.issuer.clone()).unwrap_or_default();
                    Finding::fail(
                        "certificate",
                        if self_signed {
                            "the server's certificate is self-signed".to_owned()
                        } else {
                            format!(
                                "the server's certificate is issued by an authority this computer does not trust ({issuer})"
                            )
                        },
                        format!("no authority this computer trusts vouches for it; its SHA-256 fingerprint is {fp}"),
                        format!("{pin_fix}; or give the issuing CA's certificate with ca_file"),
                    )
                }
            },
            Some(rustls::Error::General(m)) if m.contains("pinned") => Finding::fail(
                "certificate",
                "the server's certificate is not the pinned one",
                m,
                format!(
                    "if the server's certificate was renewed, check the new one with its admin and update \
                     tls_fingerprint = \"{fp}\"; otherwise someone may be intercepting the connection"
                ),
            ),
            Some(
                rustls::Error::AlertReceived(AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure)
                | rustls::Error::PeerIncompatible(_),
            ) => Finding::fail(
                "certificate",
                "the server offers no TLS version or cipher Pillarbox accepts",
                "it speaks only TLS below 1.2 or outdated ciphers, which are broken",
                "ask the server's admin to enable TLS 1.2 or 1.3",
            ),
            _ => Finding::fail(
                "certificate",
                "the TLS handshake failed",
                error.to_string(),
                "check the port and tls settings; if they are right, the server's TLS setup is broken",
            ),
        };
        self.add(f);
    }

    async fn auth(&mut self, conn: &mut Conn) -> bool {
        let a = self.account;
        let password = match self.opts.password.cloned() {
            Some(p) => Ok(p),
            None => pillarbox_fetch::credential(a, false).await,
        };
        let password = match password {
            Ok(p) => p,
            Err(pillarbox_fetch::FetchError::OAuth2 { error, cause, fix, .. }) => {
                self.report.auth = Some(AuthOutcome::Other);
                self.add(Finding::fail("auth", "cannot get an OAuth2 access token", format!("{error}: {cause}"), fix));
                return false;
            }
            Err(e) => {
                self.report.auth = Some(AuthOutcome::Other);
                self.add(Finding::fail(
                    "auth",
                    "cannot get the password",
                    e.to_string(),
                    "check the password source (password_command runs with /bin/sh -c; password_file must be \
                     readable only by you)",
                ));
                return false;
            }
        };
        // Servers delay answers after failed logins (Dovecot by up to 15 s): wait for that.
        let result = timed(self.opts.timeout.max(Duration::from_secs(30)), conn.login(a, &password)).await;
        let hint = provider_hint(&a.host);
        let user = &a.username;
        let refusal_text = |e: &ConnError| match e {
            ConnError::AuthFailed(l) | ConnError::InUse(l) | ConnError::LoginDelay(l) => l.clone(),
            ConnError::Refused { line, .. } => line.clone(),
            other => other.to_string(),
        };
        let (outcome, f) = match result {
            Ok(()) => (
                AuthOutcome::LoggedIn,
                Finding::pass(
                    "auth",
                    format!(
                        "logged in as {user} with {}{}",
                        conn.mechanism,
                        if conn.tls { "" } else { " (unencrypted)" }
                    ),
                ),
            ),
            Err(e @ (ConnError::AuthFailed(_) | ConnError::NoAuth(_))) if !conn.tls && cleartext_refusal(&e) => (
                AuthOutcome::Other,
                Finding::fail(
                    "auth",
                    "the server refuses passwords on an unencrypted connection",
                    format!("it answered: {}", refusal_text(&e)),
                    "use TLS: tls = \"implicit\" on port 995, or tls = \"starttls\" on port 110",
                ),
            ),
            Err(ConnError::AuthFailed(line))
                if pillarbox_fetch::conn::refusal_has(&line, pillarbox_proto::RespCode::SysPerm) =>
            {
                (
                    AuthOutcome::Other,
                    Finding::fail(
                        "auth",
                        "the server says this mailbox cannot be used",
                        format!("it answered: {line}"),
                        "contact the provider: the mailbox is blocked, disabled or broken on their side",
                    ),
                )
            }
            Err(ConnError::AuthFailed(line)) if a.password.is_token() => (
                AuthOutcome::Refused,
                Finding::fail(
                    "auth",
                    format!("the server refused the OAuth2 token for {user} ({})", conn.mechanism),
                    format!("it answered: {line}"),
                    "the token may have expired or been revoked, or lack the mail scope: check what token_command \
                     prints (a fresh access token for this user, with the provider's POP scope)",
                ),
            ),
            Err(ConnError::AuthFailed(line)) => (
                AuthOutcome::Refused,
                Finding::fail(
                    "auth",
                    format!("the server refused the login of {user}"),
                    format!(
                        "it answered: {line} (wrong password or unknown user name: servers do not say which){hint}"
                    ),
                    format!(
                        "check the password; some servers want the full address as user name, others only the part \
                         before @ ({}){}",
                        user.split('@').next().unwrap_or(user),
                        if hint.is_empty() { "" } else { "; see the note on this provider above" }
                    ),
                ),
            ),
            Err(ConnError::NoAuth(m)) => (
                AuthOutcome::Other,
                Finding::fail(
                    "auth",
                    "no login mechanism to use",
                    format!("{m}; the server offers: {}", offered_logins(conn)),
                    "set auth = \"auto\", or one of the mechanisms the server offers",
                ),
            ),
            Err(ConnError::Refused { line, .. })
                if pillarbox_fetch::conn::refusal_has(&line, pillarbox_proto::RespCode::SysTemp) =>
            {
                (
                    AuthOutcome::Other,
                    Finding::warn(
                        "auth",
                        "the server has a temporary problem",
                        format!("it answered: {line}"),
                        "try again later; if it lasts, tell the provider",
                    ),
                )
            }
            Err(ConnError::Refused { command, line }) if command != "login" && !line.contains('[') => (
                AuthOutcome::Other,
                Finding::fail(
                    "auth",
                    format!("the server refused {command}"),
                    format!("it answered: {line}; it offers: {}", offered_logins(conn)),
                    "set auth = \"auto\", or one of the mechanisms the server offers",
                ),
            ),
            Err(ConnError::InUse(line)) => (
                AuthOutcome::Other,
                Finding::fail(
                    "auth",
                    "[IN-USE]: another client has this mailbox open right now",
                    format!("it answered: {line}"),
                    "close the other mail program or device using this account (a phone checking mail is the usual \
                     one), or wait for it to finish; then try again",
                ),
            ),
            Err(ConnError::LoginDelay(line)) => (
                AuthOutcome::Other,
                Finding::warn(
                    "auth",
                    "[LOGIN-DELAY]: logged in too soon after the previous login",
                    format!(
                        "it answered: {line}{}",
                        conn.capa.login_delay().map(|s| format!(" (one login every {s} s)")).unwrap_or_default()
                    ),
                    "wait and try again; run `pillarbox fetch --every` with at least the server's LOGIN-DELAY",
                ),
            ),
            Err(e) => (
                AuthOutcome::Other,
                Finding::fail(
                    "auth",
                    "the login did not complete",
                    e.to_string(),
                    "try again; if it repeats, check the port and TLS settings",
                ),
            ),
        };
        if outcome == AuthOutcome::LoggedIn && a.password.is_token() {
            // Microsoft accepts AUTH with a token for another user, or for a mailbox without POP,
            // and refuses the first command after: STAT tells.
            if let Err(e) = timed(self.opts.timeout, conn.command(ClientCommand::Stat)).await {
                self.report.auth = Some(AuthOutcome::Other);
                self.add(Finding::fail(
                    "auth",
                    format!("the server took the OAuth2 token at AUTH, then refused the mailbox of {user}"),
                    format!("STAT answered: {}", refusal_text(&e)),
                    "check that the token was issued for this very mailbox (username = the address you signed in \
                     with at the provider) and that POP is enabled for it (Microsoft 365: Exchange admin center, the \
                     mailbox, Manage email apps, POP; Outlook.com and Gmail: POP in the mail settings)",
                ));
                return false;
            }
        }
        self.report.auth = Some(outcome);
        self.add(f);
        outcome == AuthOutcome::LoggedIn
    }

    fn capabilities(&mut self, before: &Capa, after: &Capa) {
        let has = |c: &str| before.has(c) || after.has(c);
        let keep = self.account.keep;
        if before.lines.is_empty() && after.lines.is_empty() {
            self.add(Finding::warn(
                "capabilities",
                "the server does not answer CAPA (an RFC 1939-only server)",
                "Pillarbox cannot see whether it offers UIDL and PIPELINING",
                "nothing to do: fetching works one command at a time, and UIDL is tried anyway",
            ));
            return;
        }
        let all = if after.lines.is_empty() { before } else { after };
        let mut problems = Vec::new();
        if !has("UIDL") {
            problems.push(match keep {
                Keep::Delete => Finding::warn(
                    "capabilities",
                    "no UIDL",
                    "without unique ids, a download cut short is recognised by content instead",
                    "nothing to do with keep = \"delete\"",
                ),
                k => Finding::fail(
                    "capabilities",
                    format!("no UIDL, so keep = \"{}\" is impossible", k),
                    "without unique ids, messages left on the server cannot be told apart from new ones: every fetch \
                     would download them again",
                    "use keep = \"delete\" for this account (--keep delete)",
                ),
            });
        }
        if !has("PIPELINING") {
            problems.push(Finding::warn(
                "capabilities",
                "no PIPELINING",
                "every command waits for the server's answer: a download of N messages takes N round trips",
                "nothing to do; it is only slower on a distant server",
            ));
        }
        let expire = all.lines.iter().find_map(|l| {
            let mut w = l.split_whitespace();
            w.next().filter(|k| k.eq_ignore_ascii_case("EXPIRE"))?;
            w.next().map(str::to_ascii_uppercase)
        });
        if let Some(days) = expire.as_deref().and_then(|e| e.parse::<u32>().ok()) {
            let too_short = match keep {
                Keep::Keep => true,
                Keep::Days(d) => d > days,
                Keep::Delete => false,
            };
            if too_short {
                problems.push(Finding::warn(
                    "capabilities",
                    format!("the server keeps downloaded mail only {days} days (EXPIRE {days})"),
                    format!(
                        "keep = \"{}\" asks for longer, but the server deletes messages {} after they are downloaded",
                        keep,
                        if days == 0 { "right".to_owned() } else { format!("{days} days") }
                    ),
                    format!("use keep = \"delete\" or at most keep = \"{days}d\""),
                ));
            }
        }
        for f in problems {
            self.add(f);
        }
        let mut notes = vec![capa_summary(all)];
        if let Some(s) = all.login_delay() {
            notes.push(format!("LOGIN-DELAY {s}: one login every {s} s, so `fetch --every` should be at least that"));
        }
        if let Some(e) = expire.filter(|e| e != "NEVER") {
            notes.push(format!("EXPIRE {e}: the server deletes downloaded mail after {e} days"));
        }
        if !self.report.findings.iter().any(|f| f.id == "capabilities") {
            self.add(Finding::pass("capabilities", notes.join("; ")));
        }
    }

    async fn mailbox(&mut self, conn: &mut Conn, connect_rtt: Duration) {
        let t = self.opts.timeout;
        let stat = match timed(t, conn.command(ClientCommand::Stat)).await {
            Ok(s) => s,
            Err(e) => {
                self.add(Finding::fail("mailbox", "STAT failed", e.to_string(), "try again later"));
                return;
            }
        };
        let mut w = stat.split_whitespace();
        let (Some(count), Some(octets)) =
            (w.next().and_then(|n| n.parse::<usize>().ok()), w.next().and_then(|n| n.parse::<u64>().ok()))
        else {
            self.add(Finding::fail(
                "mailbox",
                "the server's STAT answer is malformed",
                format!("+OK {stat}"),
                "report this to the provider",
            ));
            return;
        };
        let sizes = match timed(t, async {
            conn.command(ClientCommand::List(None)).await?;
            conn.listing().await
        })
        .await
        {
            Ok(lines) => lines,
            Err(e) => {
                self.add(Finding::fail("mailbox", "LIST failed", e.to_string(), "try again later"));
                return;
            }
        };
        let sizes: std::collections::HashMap<&str, u64> =
            sizes.iter().filter_map(|l| l.split_once(' ')).filter_map(|(n, s)| Some((n, s.parse().ok()?))).collect();
        let size_of = |n: &str| sizes.get(n).copied().unwrap_or(0);
        let uids = timed(t, async {
            conn.command(ClientCommand::Uidl(None)).await?;
            conn.listing().await
        })
        .await
        .ok();
        let stored = self
            .opts
            .state
            .as_ref()
            .map(|d| Journal::peek(&d.of(self.account)).unwrap_or_default())
            .unwrap_or_default();
        let (new, new_octets) = match &uids {
            Some(lines) => lines
                .iter()
                .filter_map(|l| l.split_once(' '))
                .filter(|(_, id)| !stored.contains_key(*id))
                .fold((0, 0), |(n, o), (num, _)| (n + 1, o + size_of(num))),
            None => (count, octets),
        };
        // Round trips: the median of three NOOPs, next to the connect time.
        let mut rtts = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            if timed(t, conn.command(ClientCommand::Noop)).await.is_err() {
                break;
            }
            rtts.push(start.elapsed());
        }
        rtts.sort();
        let rtt = rtts.get(rtts.len() / 2).copied().unwrap_or(connect_rtt);
        let pipelining = conn.capa.has("PIPELINING");
        let trips = if pipelining { new.div_ceil(64) + 3 } else { 2 * new + 3 };
        let estimate = rtt.as_secs_f64() * trips as f64 + new_octets as f64 / ASSUMED_BYTES_PER_SEC;
        self.report.new_mail = Some((new, new_octets));
        self.add(Finding::pass(
            "mailbox",
            format!(
                "{count} messages, {}; {new} new for this account ({}); download time {} (round trip {:.1} ms, \
                 {}, 100 Mbit/s assumed)",
                human_bytes(octets),
                human_bytes(new_octets),
                human_secs(estimate),
                rtt.as_secs_f64() * 1000.0,
                if pipelining { "pipelined" } else { "no pipelining" }
            ),
        ));
    }
}

/// Checks on this computer: the destination, free space, the state lock, file permissions.
fn local(account: &Account, opts: &Options<'_>, report: &mut Report) {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let need = report.new_mail.map_or(0, |(_, o)| o);
    let target = match &account.deliver {
        Deliver::Maildir(p) | Deliver::Mbox(p) => Some(p.clone()),
        Deliver::Mda(_) => None,
    };
    match &account.deliver {
        Deliver::Maildir(p) => {
            if let Err(e) = writable(&p.join("tmp"), p) {
                found.push(Finding::fail(
                    "local",
                    format!("cannot write into the Maildir {}", p.display()),
                    e,
                    "fix the folder's permissions, or choose another deliver = { maildir = ... }",
                ));
            }
        }
        Deliver::Mbox(p) => {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let exists_writable = std::fs::OpenOptions::new().append(true).open(p).map(drop);
            let ok = match exists_writable {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => writable(dir, dir),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = ok {
                found.push(Finding::fail(
                    "local",
                    format!("cannot write the mbox {}", p.display()),
                    e,
                    "fix the file's or folder's permissions, or choose another deliver = { mbox = ... }",
                ));
            }
        }
        Deliver::Mda(cmd) => {
            let program = cmd.split_whitespace().next().unwrap_or_default();
            if !program_exists(program) {
                found.push(Finding::fail(
                    "local",
                    format!("the MDA program {program:?} is not found"),
                    "it is neither an executable path nor in PATH",
                    "install it, or give its full path in deliver = { mda = ... }",
                ));
            }
        }
    }
    if let Some(t) = &target {
        let existing = t.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
        if let Ok(st) = rustix::fs::statvfs(existing) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            if free < need.saturating_add(need / 10) {
                found.push(Finding::fail(
                    "local",
                    format!("not enough free space for the new mail on {}", existing.display()),
                    format!("{} of new mail, {} free", human_bytes(need), human_bytes(free)),
                    "free some space, or deliver elsewhere",
                ));
            } else if free < need.saturating_mul(2).max(100 * 1024 * 1024) {
                found.push(Finding::warn(
                    "local",
                    format!("little free space on {}", existing.display()),
                    format!("{} free, {} of new mail", human_bytes(free), human_bytes(need)),
                    "free some space before the mailbox grows",
                ));
            }
        }
    }
    if let Some(dirs) = &opts.state {
        let d = dirs.of(account);
        if Journal::is_locked(&d) {
            found.push(Finding::warn(
                "local",
                "a `pillarbox fetch` is running for this account now",
                format!("its lock {} is held", d.join("lock").display()),
                "nothing to do: a second `pillarbox fetch` started now stops at once (exit 75) and leaves the account to \
                 this one; if none is running, look for a stuck process (fuser -v on the lock file)",
            ));
        }
    }
    let mut files: Vec<(&str, PathBuf, Status)> = Vec::new();
    if let Some(f) = &opts.accounts_file {
        files.push(("the accounts file", f.clone(), Status::Warn));
    }
    // A typed password's file is written when the account is saved.
    if let pillarbox_accounts::PasswordSource::File(p) = &account.password
        && opts.password.is_none()
    {
        files.push(("the password file", p.clone(), Status::Fail));
    }
    for (what, path, severity) in files {
        if let Ok(m) = std::fs::metadata(&path)
            && m.mode() & 0o077 != 0
        {
            found.push(Finding::problem(
                "local",
                severity,
                format!("{what} can be read by others"),
                format!("{} has mode {:o}", path.display(), m.mode() & 0o777),
                format!("chmod 600 {}", path.display()),
            ));
        }
    }
    if found.is_empty() {
        let dest = match &account.deliver {
            Deliver::Maildir(p) => format!("Maildir {}", p.display()),
            Deliver::Mbox(p) => format!("mbox {}", p.display()),
            Deliver::Mda(c) => format!("MDA {}", c.split_whitespace().next().unwrap_or_default()),
        };
        let space = target
            .as_deref()
            .and_then(|t| t.ancestors().find(|a| a.exists()))
            .and_then(|e| rustix::fs::statvfs(e).ok())
            .map(|st| format!(", {} free", human_bytes(st.f_bavail.saturating_mul(st.f_frsize))))
            .unwrap_or_default();
        found.push(Finding::pass("local", format!("{dest} is writable{space}; state and files in order")));
    }
    report.findings.extend(found);
}

/// Whether a file can be created in `dir` (or, when it does not exist yet, where it would be).
fn writable(dir: &Path, root: &Path) -> Result<(), String> {
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(root);
    if !existing.is_dir() {
        return Err(format!("{} is not a folder", existing.display()));
    }
    tempfile::Builder::new()
        .prefix(".pillarbox-check")
        .tempfile_in(existing)
        .map(drop)
        .map_err(|e| format!("{}: {e}", existing.display()))
}

fn program_exists(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(program))))
}

/// One TLS handshake attempt on a fresh connection: does this port speak TLS?
async fn tls_spoken(addr: SocketAddr, host: &str, timeout: Duration) -> bool {
    let Ok(tcp) = conn::connect(&[addr], timeout).await else { return false };
    let probe = Account::probe(host, addr.port(), TlsMode::Implicit);
    let Ok((connector, presented)) = tls::recording_connector(&probe) else { return false };
    let mut c = Conn::new(tcp);
    let r = timed(timeout, c.start_tls(&connector, host)).await;
    r.is_ok() || !presented.chain().is_empty()
}

/// The first line a port sends in plaintext, when it is a POP3 greeting.
async fn plain_greeting(addr: SocketAddr, timeout: Duration) -> Option<String> {
    let tcp = conn::connect(&[addr], timeout).await.ok()?;
    let mut c = Conn::new(tcp);
    let line = timed(timeout, c.line()).await.ok()?;
    line.starts_with("+OK").then_some(line)
}

async fn timed<T>(t: Duration, f: impl Future<Output = Result<T, ConnError>>) -> Result<T, ConnError> {
    tokio::time::timeout(t, f).await.unwrap_or(Err(ConnError::Timeout(t)))
}

fn der(p: &Presented) -> Vec<Vec<u8>> {
    p.chain().into_iter().map(|c| c.as_ref().to_vec()).collect()
}

fn cleartext_refusal(e: &ConnError) -> bool {
    let text = match e {
        ConnError::AuthFailed(l) => l.to_ascii_lowercase(),
        ConnError::NoAuth(m) => m.to_ascii_lowercase(),
        _ => return false,
    };
    ["tls", "encrypt", "cleartext", "plaintext", "ssl", "secure"].iter().any(|w| text.contains(w))
}

fn offered_logins(conn: &Conn) -> String {
    let mut v: Vec<String> = conn.capa.sasl().into_iter().map(|m| format!("AUTH {m}")).collect();
    if conn.capa.has("USER") {
        v.push("USER/PASS".into());
    }
    if conn.greeting.contains('<') {
        v.push("APOP".into());
    }
    if v.is_empty() { "nothing it names (no SASL or USER in CAPA)".into() } else { v.join(", ") }
}

fn capa_summary(c: &Capa) -> String {
    let names: Vec<&str> =
        c.lines.iter().map(|l| l.as_str()).filter(|l| !l.to_ascii_uppercase().starts_with("IMPLEMENTATION")).collect();
    if names.is_empty() { "no capabilities listed".into() } else { names.join(", ") }
}

/// A note for providers known to refuse ordinary passwords.
pub fn provider_hint(host: &str) -> String {
    let h = host.to_ascii_lowercase();
    let ends = |d: &str| h == d || h.ends_with(&format!(".{d}"));
    if ends("gmail.com") || ends("googlemail.com") {
        "; Gmail accepts only an app password (with 2-step verification, made at \
         myaccount.google.com/apppasswords) or OAuth2 (token_command with a tool such as oama), and POP must \
         be enabled in Gmail's settings"
            .into()
    } else if ends("outlook.com") || ends("office365.com") || ends("hotmail.com") || ends("live.com") {
        "; Outlook.com and Office 365 turned off password logins for POP: they require OAuth2 (give the account \
         a token_command that prints an access token, from a tool such as oama or mutt_oauth2.py)"
            .into()
    } else if ends("yahoo.com") || ends("aol.com") || ends("icloud.com") || ends("me.com") {
        "; this provider requires an app password (made in its account security settings), not your usual password"
            .into()
    } else {
        String::new()
    }
}

fn domain_of(host: &str) -> &str {
    host.split_once('.')
        .map_or(host, |(first, rest)| if ["pop", "pop3", "mail"].contains(&first) { rest } else { host })
}

fn clip(s: &str) -> String {
    let s: String = s.chars().take(100).collect();
    s.trim().to_owned()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

fn human_secs(s: f64) -> String {
    if s < 1.0 {
        "under 1 s".into()
    } else if s < 120.0 {
        format!("about {s:.0} s")
    } else {
        format!("about {:.0} min", s / 60.0)
    }
}

/// The parts of a certificate that explain a verification failure.
struct CertInfo {
    names: Vec<String>,
    issuer: String,
    self_signed: bool,
    not_before: i64,
    not_after: i64,
}

impl CertInfo {
    fn parse(der: &[u8]) -> Self {
        let Ok((_, c)) = x509_parser::parse_x509_certificate(der) else {
            return Self { names: Vec::new(), issuer: "?".into(), self_signed: false, not_before: 0, not_after: 0 };
        };
        let mut names: Vec<String> = Vec::new();
        if let Ok(Some(san)) = c.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        let ip = match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                            16 => <[u8; 16]>::try_from(*ip).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                            _ => None,
                        };
                        names.extend(ip);
                    }
                    _ => {}
                }
            }
        }
        if names.is_empty() {
            names.extend(c.subject().iter_common_name().filter_map(|a| a.as_str().ok()).map(str::to_owned));
        }
        let issuer = c
            .issuer()
            .iter_organization()
            .chain(c.issuer().iter_common_name())
            .filter_map(|a| a.as_str().ok())
            .next()
            .unwrap_or("an unnamed issuer")
            .to_owned();
        Self {
            names,
            issuer,
            self_signed: c.subject().as_raw() == c.issuer().as_raw(),
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
        }
    }

    fn days_left(&self) -> i64 {
        (self.not_after - pillarbox_os::unix_now() as i64) / 86_400
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_notes() {
        assert!(provider_hint("pop.gmail.com").contains("app password"));
        assert!(provider_hint("outlook.office365.com").contains("OAuth2"));
        assert!(provider_hint("pop-mail.outlook.com").contains("OAuth2"));
        assert_eq!(provider_hint("pop.example.com"), "");
        assert_eq!(provider_hint("notgmail.com"), "", "a suffix is a whole label");
    }

    #[test]
    fn sizes_domains_and_order() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(20_500_000), "20.5 MB");
        assert_eq!(domain_of("pop.example.com"), "example.com");
        assert_eq!(domain_of("example.com"), "example.com");
        assert!(Status::Fail > Status::Warn && Status::Warn > Status::Skip && Status::Skip > Status::Pass);
        let r = Report {
            findings: vec![Finding::pass("dns", "ok"), Finding::warn("auth", "w", "c", "f")],
            auth: None,
            new_mail: None,
        };
        assert_eq!((r.worst(), r.failed()), (Status::Warn, false));
    }
}
