//! The POP3 client connection: TCP, implicit TLS or STLS (never a silent fallback, and nothing
//! read before the handshake is kept), CAPA, authentication, and reading responses, including
//! message text streamed through the dot-unstuffer without holding a whole message.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use pillarbox_proto::client::{ClientCommand, Item, MultiLine, encode, parse_status, take_line};
use pillarbox_proto::{RespCode, Secret, Unstuffed, Unstuffer};
use pillarbox_sasl::client::{ClientError, ClientMech};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls;
use pillarbox_accounts::{Account, AuthChoice, TlsMode};

pub use pillarbox_proto::client::MAX_LINE;
/// Most lines in a CAPA, LIST or UIDL answer (a maildrop of a million messages)...
const MAX_LISTING: usize = 1_000_000;
/// ...and most octets: a million UIDL lines of 70-character ids fit; a hostile server's endless
/// listing does not get to fill memory.
const MAX_LISTING_OCTETS: usize = 128 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte from the server for this long ends the session.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {host} failed: {message}")]
    Tls {
        host: String,
        message: String,
        /// What rustls said, to explain a certificate problem.
        cause: Option<rustls::Error>,
    },
    #[error("the server does not offer STLS, and tls = \"starttls\" never falls back to plaintext")]
    NoStls,
    #[error("the server refused the login: {0}")]
    AuthFailed(String),
    #[error("the maildrop is in use by another client: {0}")]
    InUse(String),
    #[error("the server asks to wait before logging in again: {0}")]
    LoginDelay(String),
    #[error("no usable authentication: {0}")]
    NoAuth(String),
    #[error("the server answered {command}: {line}")]
    Refused { command: String, line: String },
    #[error("protocol error from the server: {0}")]
    Protocol(String),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server sent nothing for {0:?}")]
    Timeout(Duration),
}

impl ConnError {
    /// A stable code for JSON events.
    pub fn code(&self) -> &'static str {
        match self {
            ConnError::Resolve(_) => "dns",
            ConnError::Connect { .. } => "connect",
            ConnError::Tls { .. } => "tls",
            ConnError::NoStls => "starttls-missing",
            ConnError::AuthFailed(_) => "auth-failed",
            ConnError::InUse(_) => "in-use",
            ConnError::LoginDelay(_) => "login-delay",
            ConnError::NoAuth(_) => "auth-unavailable",
            ConnError::Refused { .. } => "refused",
            ConnError::Protocol(_) => "protocol",
            ConnError::Io(_) => "io",
            ConnError::Timeout(_) => "timeout",
        }
    }

    /// A temporary problem (try again later) rather than a wrong setting.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            ConnError::Io(_)
                | ConnError::Timeout(_)
                | ConnError::InUse(_)
                | ConnError::LoginDelay(_)
                | ConnError::Connect { .. }
        )
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Only while the plain stream is being moved into TLS.
    Moving,
}

/// What the server offers (RFC 2449 CAPA).
#[derive(Debug, Clone, Default)]
pub struct Capa {
    pub lines: Vec<String>,
}

impl Capa {
    pub fn has(&self, name: &str) -> bool {
        self.lines.iter().any(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case(name)))
    }

    /// The seconds the server wants between logins (RFC 2449 LOGIN-DELAY), if it says.
    pub fn login_delay(&self) -> Option<u64> {
        self.lines.iter().find_map(|l| {
            let mut w = l.split_whitespace();
            w.next().filter(|k| k.eq_ignore_ascii_case("LOGIN-DELAY"))?;
            w.next()?.parse().ok()
        })
    }

    pub fn sasl(&self) -> Vec<String> {
        self.lines
            .iter()
            .find(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case("SASL")))
            .map(|l| l.split_whitespace().skip(1).map(str::to_ascii_uppercase).collect())
            .unwrap_or_default()
    }
}

pub struct Conn {
    stream: Stream,
    buf: BytesMut,
    pub greeting: String,
    pub capa: Capa,
    pub tls: bool,
    pub mechanism: String,
    /// The server switched to UTF-8 mode (RFC 6856) at our UTF8 command.
    pub utf8: bool,
}

/// The addresses of `host:port`, from the system's resolver (hosts file, DNS).
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnError> {
    let addrs: Vec<_> =
        tokio::net::lookup_host((host, port)).await.map_err(|_| ConnError::Resolve(host.to_owned()))?.collect();
    if addrs.is_empty() {
        return Err(ConnError::Resolve(host.to_owned()));
    }
    Ok(addrs)
}

/// A TCP connection to the first of `addrs` that accepts one within `timeout`.
pub async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ConnError> {
    let mut last = None;
    for addr in addrs {
        let error = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
        };
        last = Some(ConnError::Connect { addr: addr.to_string(), source: error });
    }
    Err(last.unwrap_or_else(|| ConnError::Resolve("(no address)".into())))
}

impl Conn {
    /// Connect, secure and log in.
    pub async fn open(account: &Account, password: &Secret<Vec<u8>>) -> Result<Self, ConnError> {
        let addrs = resolve(&account.host, account.port).await?;
        let tcp = connect(&addrs, CONNECT_TIMEOUT).await?;
        // The trust store is read only for an account that uses TLS.
        let connector = || {
            tls::connector(account).map_err(|message| ConnError::Tls {
                host: account.host.clone(),
                message,
                cause: None,
            })
        };
        let mut conn = Self::new(tcp);
        if account.tls == TlsMode::Implicit {
            conn.start_tls(&connector()?, &account.host).await?;
        }
        if account.tls == TlsMode::Starttls {
            conn.greet_and_stls(&connector()?, &account.host).await?;
        } else {
            conn.greet().await?;
        }
        conn.login(account, password).await?;
        Ok(conn)
    }

    /// A session on a connected socket; nothing is read yet.
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            stream: Stream::Plain(tcp),
            buf: BytesMut::new(),
            greeting: String::new(),
            capa: Capa::default(),
            tls: false,
            mechanism: String::new(),
            utf8: false,
        }
    }

    /// Read the greeting and the capabilities.
    pub async fn greet(&mut self) -> Result<(), ConnError> {
        self.greeting = self.status("greeting").await?;
        self.capa = self.read_capa().await?;
        Ok(())
    }

    /// STLS, which the server must offer: there is no fallback to plaintext.
    pub async fn stls(&mut self, connector: &tokio_rustls::TlsConnector, host: &str) -> Result<(), ConnError> {
        if !self.capa.has("STLS") {
            return Err(ConnError::NoStls);
        }
        self.stls_now(connector, host).await
    }

    /// The greeting, then STLS at once: the capabilities that count are the ones read inside
    /// TLS, so asking for them before (a round trip) only tells whether STLS is offered, which
    /// its answer tells as well. A refusal is [`ConnError::NoStls`].
    pub async fn greet_and_stls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        host: &str,
    ) -> Result<(), ConnError> {
        self.greeting = self.status("greeting").await?;
        match self.stls_now(connector, host).await {
            Err(ConnError::Refused { .. }) => Err(ConnError::NoStls),
            other => other,
        }
    }

    async fn stls_now(&mut self, connector: &tokio_rustls::TlsConnector, host: &str) -> Result<(), ConnError> {
        self.command(ClientCommand::Stls).await?;
        // Whatever arrived in plaintext after the +OK is not trusted inside TLS.
        self.buf.clear();
        self.start_tls(connector, host).await?;
        self.capa = self.read_capa().await?;
        Ok(())
    }

    /// RFC 2449 section 5: capabilities may change after login (PIPELINING, EXPIRE...).
    pub async fn refresh_capa(&mut self) {
        if self.send_command(ClientCommand::Capa).await.is_ok() {
            self.take_capa().await;
        }
    }

    /// Read the answer to a CAPA sent after the login (alone, or pipelined with the commands
    /// that follow it) and keep it; a refusal or a failure keeps what the server said before.
    pub async fn take_capa(&mut self) {
        if let Ok(c) = self.capa_answer().await
            && !c.lines.is_empty()
        {
            self.capa = c;
        }
    }

    /// The TLS version and cipher suite in use.
    pub fn tls_parameters(&self) -> Option<(String, String)> {
        let Stream::Tls(t) = &self.stream else { return None };
        let (_, c) = t.get_ref();
        let version = match c.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_owned(),
            rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_owned(),
            v => format!("{v:?}"),
        };
        let suite = c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
        Some((version, suite))
    }

    /// The TLS handshake on the plain connection (implicit TLS, or after STLS).
    pub async fn start_tls(&mut self, connector: &tokio_rustls::TlsConnector, host: &str) -> Result<(), ConnError> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Moving) else {
            return Err(ConnError::Protocol("TLS is already active".into()));
        };
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| ConnError::Tls {
            host: host.to_owned(),
            message: e.to_string(),
            cause: None,
        })?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnError::Timeout(CONNECT_TIMEOUT))?
            .map_err(|e| {
                let cause = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).cloned();
                ConnError::Tls { host: host.to_owned(), message: e.to_string(), cause }
            })?;
        self.stream = Stream::Tls(Box::new(tls));
        self.tls = true;
        Ok(())
    }

    /// `tls-exporter` data for SCRAM-PLUS (RFC 9266), on TLS 1.3.
    fn channel_binding(&self) -> Option<Vec<u8>> {
        let Stream::Tls(t) = &self.stream else { return None };
        let (_, c) = t.get_ref();
        if c.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return None;
        }
        c.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None).ok()
    }

    pub async fn send(&mut self, data: &[u8]) -> Result<(), ConnError> {
        match &mut self.stream {
            Stream::Plain(s) => write_flush(s, data).await,
            Stream::Tls(s) => write_flush(s.as_mut(), data).await,
            Stream::Moving => Err(ConnError::Protocol("the connection was lost during the TLS handshake".into())),
        }
    }

    async fn fill(&mut self) -> Result<(), ConnError> {
        self.buf.reserve(64 * 1024);
        let read = async {
            match &mut self.stream {
                Stream::Plain(s) => s.read_buf(&mut self.buf).await,
                Stream::Tls(s) => s.read_buf(&mut self.buf).await,
                Stream::Moving => Ok(0),
            }
        };
        let n = tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| ConnError::Timeout(READ_TIMEOUT))??;
        if n == 0 {
            return Err(ConnError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    /// One response line (CRLF or bare LF), bounded, with control characters replaced: it may
    /// end up on a terminal (see [`pillarbox_proto::client::printable`]).
    pub async fn line(&mut self) -> Result<String, ConnError> {
        loop {
            match take_line(&mut self.buf, MAX_LINE) {
                Ok(Some(l)) => {
                    let text = String::from_utf8_lossy(&l);
                    return Ok(pillarbox_proto::client::printable(&text).into_owned());
                }
                Ok(None) => self.fill().await?,
                Err(e) => return Err(ConnError::Protocol(e.to_string())),
            }
        }
    }

    /// A status line: `+OK` gives its text, `-ERR` an error naming `command`.
    pub async fn status(&mut self, command: &str) -> Result<String, ConnError> {
        let l = self.line().await?;
        match parse_status(&l) {
            Some(s) if s.ok => Ok(l.strip_prefix("+OK").unwrap_or_default().trim().to_owned()),
            Some(_) => Err(ConnError::Refused { command: command.to_owned(), line: l }),
            None => Err(ConnError::Protocol(format!(
                "expected +OK or -ERR to {command}, got {:?}",
                l.chars().take(100).collect::<String>()
            ))),
        }
    }

    /// Send one command, encoded by the client core (which refuses arguments that would split
    /// the line), without waiting for its answer (pipelining, RFC 2449 section 6.6).
    pub async fn send_command(&mut self, command: ClientCommand<'_>) -> Result<(), ConnError> {
        let mut out = BytesMut::new();
        encode(&mut out, &command).map_err(|e| ConnError::Protocol(e.to_string()))?;
        let sent = self.send(&out).await;
        // The line may hold a password.
        out.iter_mut().for_each(|b| *b = 0);
        sent
    }

    /// Send several commands in one write (pipelining: one segment for many commands). Only for
    /// commands without secrets.
    pub async fn send_commands(&mut self, commands: &[ClientCommand<'_>]) -> Result<(), ConnError> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::with_capacity(commands.len() * 12);
        for c in commands {
            encode(&mut out, c).map_err(|e| ConnError::Protocol(e.to_string()))?;
        }
        self.send(&out).await
    }

    /// Send one command and read its status line.
    pub async fn command(&mut self, command: ClientCommand<'_>) -> Result<String, ConnError> {
        self.send_command(command).await?;
        let keyword = match command.keyword() {
            "" => "AUTH",
            k => k,
        };
        self.status(keyword).await
    }

    /// The lines of a multi-line answer after its status line.
    pub async fn listing(&mut self) -> Result<Vec<String>, ConnError> {
        let mut reader = MultiLine::new(MAX_LISTING, MAX_LISTING_OCTETS);
        let mut v = Vec::new();
        loop {
            match reader.next(&mut self.buf) {
                Ok(Some(Item::Line(l))) => v.push(l),
                Ok(Some(Item::End)) => return Ok(v),
                Ok(None) => self.fill().await?,
                Err(e) => return Err(ConnError::Protocol(e.to_string())),
            }
        }
    }

    async fn read_capa(&mut self) -> Result<Capa, ConnError> {
        self.send_command(ClientCommand::Capa).await?;
        self.capa_answer().await
    }

    async fn capa_answer(&mut self) -> Result<Capa, ConnError> {
        match self.status("CAPA").await {
            Ok(_) => Ok(Capa { lines: self.listing().await? }),
            // A server without CAPA (RFC 1939 only) is not an error.
            Err(ConnError::Refused { .. }) => Ok(Capa::default()),
            Err(e) => Err(e),
        }
    }

    /// Stream one message's text (after its `+OK`) into `sink`, chunk by chunk, with line ends as
    /// sent (CRLF) or, `to_lf`, as LF; returns the number of octets of text received (its CRLF
    /// form, what LIST counts, either way).
    pub async fn message(
        &mut self,
        to_lf: bool,
        mut sink: impl FnMut(&[u8]) -> Result<(), ConnError>,
    ) -> Result<u64, ConnError> {
        let mut unstuffer = if to_lf { Unstuffer::new().to_lf() } else { Unstuffer::new() };
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut total = 0u64;
        loop {
            if !self.buf.is_empty() {
                let r = unstuffer.decode(&self.buf, &mut out);
                let consumed = match r {
                    Unstuffed::More => self.buf.len(),
                    Unstuffed::Done(n) => n,
                };
                let _ = self.buf.split_to(consumed);
                if !out.is_empty() {
                    total += out.len() as u64;
                    sink(&out)?;
                    out.clear();
                }
                if matches!(r, Unstuffed::Done(_)) {
                    return Ok(total + unstuffer.crs_dropped());
                }
            }
            self.fill().await?;
        }
    }

    pub async fn login(&mut self, account: &Account, password: &Secret<Vec<u8>>) -> Result<(), ConnError> {
        // RFC 6856: a server that offers UTF8 may otherwise hand messages with UTF-8 headers
        // over in a downgraded form (Courier replaces each by a notice with the original as an
        // attachment). The command belongs before the login; a refusal changes nothing.
        if self.capa.has("UTF8") {
            match self.command(ClientCommand::Utf8).await {
                Ok(_) => self.utf8 = true,
                Err(ConnError::Refused { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let sasl = self.capa.sasl();
        let cleartext_ok = self.tls || account.insecure;
        let apop = self
            .greeting
            .find('<')
            .and_then(|s| self.greeting[s..].find('>').map(|e| self.greeting[s..=s + e].to_owned()));
        let cb = self.channel_binding();
        let offers = |m: &str| sasl.iter().any(|x| x == m);
        let scram = if cb.is_some() && offers("SCRAM-SHA-256-PLUS") { "SCRAM-SHA-256-PLUS" } else { "SCRAM-SHA-256" };
        let method: &str = match account.auth {
            // An OAuth2 token (token_command) logs in with the bearer mechanisms only.
            AuthChoice::Auto if account.password.is_token() => {
                if offers("OAUTHBEARER") {
                    "OAUTHBEARER"
                } else if offers("XOAUTH2") {
                    "XOAUTH2"
                } else {
                    return Err(ConnError::NoAuth(format!(
                        "the account logs in with an OAuth2 token, and the server offers neither \
                         OAUTHBEARER nor XOAUTH2 (SASL: {})",
                        sasl.join(" ")
                    )));
                }
            }
            // The strongest the server offers, and only that one: a wrong password is wrong in
            // every mechanism, and trying a second would cost the user a second failure delay and
            // the account a second strike (see the refusal's hint below for moved accounts).
            AuthChoice::Auto => {
                let password_mech = if !cleartext_ok {
                    None
                } else if offers("PLAIN") {
                    Some("PLAIN")
                } else if self.capa.has("USER") || self.capa.lines.is_empty() {
                    Some("USER")
                } else if offers("LOGIN") {
                    Some("LOGIN")
                } else {
                    None
                };
                if offers("SCRAM-SHA-256") || offers("SCRAM-SHA-256-PLUS") {
                    scram
                } else if let Some(m) = password_mech {
                    m
                } else if apop.is_some() {
                    "APOP"
                } else {
                    return Err(ConnError::NoAuth(if cleartext_ok {
                        format!("the server offers no known mechanism (SASL: {})", sasl.join(" "))
                    } else {
                        "the server offers only cleartext logins and the connection is not encrypted; use TLS (or insecure = true)".into()
                    }));
                }
            }
            AuthChoice::ScramSha256 => scram,
            AuthChoice::Plain => "PLAIN",
            AuthChoice::Login => "LOGIN",
            AuthChoice::Apop => "APOP",
            AuthChoice::User => "USER",
            AuthChoice::OAuthBearer => "OAUTHBEARER",
            AuthChoice::XOAuth2 => "XOAUTH2",
        };
        // A bearer token is as good as a password to whoever reads it.
        if matches!(method, "PLAIN" | "LOGIN" | "USER" | "OAUTHBEARER" | "XOAUTH2") && !cleartext_ok {
            return Err(ConnError::NoAuth(format!(
                "{method} would send the password in cleartext; use TLS (or insecure = true)"
            )));
        }
        match self.try_method(method, account, password, apop.as_deref(), cb).await {
            // A server that has just taken the account over from another may have no SCRAM keys
            // for it until one login with the password itself.
            Err(ConnError::AuthFailed(line))
                if account.auth == AuthChoice::Auto
                    && method.starts_with("SCRAM")
                    && cleartext_ok
                    && offers("PLAIN") =>
            {
                Err(ConnError::AuthFailed(format!(
                    "{line} (with {method}; if the password is right and the account was just moved to this \
                     server, it may not have SCRAM keys for it yet: log in once with auth = \"plain\")"
                )))
            }
            other => other,
        }
    }

    /// One login attempt with one method.
    async fn try_method(
        &mut self,
        method: &str,
        account: &Account,
        password: &Secret<Vec<u8>>,
        apop: Option<&str>,
        cb: Option<Vec<u8>>,
    ) -> Result<(), ConnError> {
        self.mechanism = method.to_owned();
        let user = &account.username;
        let result = match method {
            "USER" => match self.command(ClientCommand::User(user)).await {
                Ok(_) => self.command(ClientCommand::Pass(password.expose())).await.map(drop),
                Err(e) => Err(e),
            },
            "APOP" => {
                let ts = apop.ok_or_else(|| ConnError::NoAuth("the greeting has no APOP timestamp".into()))?;
                let digest = pillarbox_proto::apop::digest(ts, password.expose());
                self.command(ClientCommand::Apop(user, &digest)).await.map(drop)
            }
            m => self.sasl(m, user, password, cb, (&account.host, account.port)).await,
        };
        match result {
            Ok(()) => Ok(()),
            Err(ConnError::Refused { line, .. }) => Err(classify_refusal(line)),
            Err(e) => Err(e),
        }
    }

    /// A SASL exchange (RFC 5034) driven by the mechanism of `pillarbox-sasl`. The initial
    /// response goes with AUTH when the line stays within 255 octets (RFC 2449 section 4);
    /// otherwise it answers the server's first, empty challenge.
    async fn sasl(
        &mut self,
        mechanism: &str,
        user: &str,
        secret: &Secret<Vec<u8>>,
        cb: Option<Vec<u8>>,
        (host, port): (&str, u16),
    ) -> Result<(), ConnError> {
        let mut mech = ClientMech::new(mechanism, user, secret, cb)
            .map_err(|e| ConnError::NoAuth(e.to_string()))?
            .for_server(host, port);
        let mut held = None;
        match mech.initial() {
            Some(first) if "AUTH  \r\n".len() + mechanism.len() + first.expose().len().div_ceil(3) * 4 <= 255 => {
                let initial = Secret::new(B64.encode(first.expose()));
                self.send_command(ClientCommand::Auth(mechanism, Some(initial.expose()))).await?;
            }
            first => {
                held = first;
                self.send_command(ClientCommand::Auth(mechanism, None)).await?;
            }
        }
        let protocol = |e: ClientError| ConnError::Protocol(e.to_string());
        loop {
            let l = self.line().await?;
            match l.strip_prefix('+') {
                Some(rest) if !rest.starts_with("OK") => {
                    let challenge = B64
                        .decode(rest.trim())
                        .map_err(|_| ConnError::Protocol("a SASL challenge that is not base64".into()))?;
                    let answer = match held.take() {
                        Some(first) if challenge.is_empty() => first,
                        _ => mech.respond(&challenge).map_err(protocol)?,
                    };
                    let line = Secret::new(B64.encode(answer.expose()));
                    self.send_command(ClientCommand::SaslResponse(line.expose())).await?;
                }
                Some(_) => return mech.finish().map_err(protocol),
                None if l.starts_with("-ERR") => {
                    let line = match mech.refusal() {
                        Some(why) => format!("{l} ({why})"),
                        None => l,
                    };
                    return Err(ConnError::Refused { command: "AUTH".into(), line });
                }
                None => return Err(ConnError::Protocol(format!("expected a SASL challenge, got {l:?}"))),
            }
        }
    }
}

/// What a refused login means, from its response code (RFC 2449 section 8, RFC 3206).
fn classify_refusal(line: String) -> ConnError {
    match parse_status(&line) {
        Some(s) if s.has(RespCode::InUse) => ConnError::InUse(line),
        Some(s) if s.has(RespCode::LoginDelay) => ConnError::LoginDelay(line),
        Some(s) if s.has(RespCode::SysTemp) => ConnError::Refused { command: "login".into(), line },
        _ => ConnError::AuthFailed(line),
    }
}

/// The response code of a refusal's line, if it has the given one.
pub fn refusal_has(line: &str, code: RespCode) -> bool {
    parse_status(line).is_some_and(|s| s.has(code))
}

async fn write_flush<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> Result<(), ConnError> {
    s.write_all(data).await?;
    s.flush().await?;
    Ok(())
}
