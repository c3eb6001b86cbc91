//! The server side of a POP3 session as a sans-IO state machine (RFC 1939 sections 3-7,
//! RFC 2449 CAPA and PIPELINING, RFC 2595 STLS, RFC 3206 response codes).
//!
//! The driver feeds received bytes with [`ServerSession::feed`], then calls
//! [`ServerSession::poll`] until it returns [`Event::NeedInput`], writing out
//! [`ServerSession::take_output`] whenever it likes (at the latest before reading again, which
//! coalesces the answers to a pipelined batch into one write). Events that need the outside world
//! (checking credentials, streaming a message, TLS, applying deletions) are answered by the
//! matching method before the next `poll`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::BytesMut;

use crate::command::{self, Command, ParseError};
use crate::dotstuff::MessageEncoder;
use crate::limits::{MAX_AUTH_FAILURES, MAX_BAD_COMMANDS, MAX_COMMAND_LINE, MAX_SASL_LINE};
use crate::line::{LineDecoder, LineEvent};
use crate::response::{self, RespCode};
use crate::types::{MsgNum, Secret, UniqueId};

/// What the driver tells a new session about its connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Text after `+OK` in the greeting.
    pub greeting: String,
    /// The APOP timestamp (`<...>`, RFC 1939 section 7), present only when APOP can succeed for
    /// some user; then it is also appended to the greeting.
    pub apop_timestamp: Option<String>,
    /// Whether the connection is already encrypted (implicit TLS, RFC 8314).
    pub tls_active: bool,
    /// Whether STLS can be offered (TLS is configured and the connection is plaintext).
    pub stls_available: bool,
    /// Whether USER/PASS may be used on this connection while it is not encrypted
    /// (a trusted network). Over TLS they are always allowed.
    pub cleartext_allowed: bool,
    /// Value of the IMPLEMENTATION capability (RFC 2449 section 6.9); `None` hides it.
    pub implementation: Option<String>,
    /// The EXPIRE capability before login (RFC 2449 section 6.7): the server's policy, and
    /// whether it varies per user; `None` hides it.
    pub expire: Option<ExpireCapa>,
    /// LOGIN-DELAY before login (RFC 2449 section 6.5): seconds, and whether it varies per user;
    /// `None` hides it.
    pub login_delay: Option<(u32, bool)>,
    /// SASL mechanisms usable on this connection as it is now (RFC 5034), in order of preference.
    pub sasl: Vec<String>,
}

/// A retention policy (RFC 2449 section 6.7 EXPIRE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    /// Messages are kept until the client deletes them.
    Never,
    /// Messages are removed this many days after they were first retrieved; with 0, retrieved
    /// messages are removed when the session ends with QUIT even without DELE.
    Days(u32),
}

impl std::fmt::Display for Expire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expire::Never => f.write_str("NEVER"),
            Expire::Days(n) => write!(f, "{n}"),
        }
    }
}

/// The EXPIRE capability as announced before login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpireCapa {
    /// The server-wide default.
    pub default: Expire,
    /// Some users have another value (announced as `EXPIRE n USER`).
    pub per_user: bool,
}

/// What the driver learned about the user at login.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Login {
    /// The user's retention policy, announced after login and applied at QUIT for `Days(0)`.
    pub expire: Option<Expire>,
    /// The user's LOGIN-DELAY in seconds, announced after login.
    pub login_delay: Option<u32>,
}

/// One message in a session's fixed listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingEntry {
    /// Octets of the message with CRLF line ends, before dot-stuffing.
    pub size: u64,
    pub uid: UniqueId,
}

/// The maildrop as this session sees it, fixed at login (RFC 1939 section 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<ListingEntry>,
}

/// The credential a client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// USER/PASS.
    Password(Secret<Vec<u8>>),
    /// APOP: the greeting's timestamp and the client's lowercase hex digest.
    Apop { timestamp: String, digest: Secret<String> },
}

/// Why a login did not open the maildrop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Wrong name or credential (`-ERR [AUTH]`); the same answer for both.
    Credentials,
    /// The maildrop is locked by another session (`-ERR [IN-USE]`).
    InUse,
    /// A temporary problem on the server (`-ERR [SYS/TEMP]`).
    Temporary,
    /// A permanent problem with this account (`-ERR [SYS/PERM]`).
    Permanent,
    /// The user logged in too recently (`-ERR [LOGIN-DELAY]`, RFC 2449 section 8.1.2).
    LoginDelay,
    /// POP3 is turned off for the account (its domain's setting): `-ERR [SYS/PERM]`.
    Disabled,
    /// Too many logins to the account are in progress at once (`-ERR [SYS/TEMP]`).
    TooManyAttempts,
    /// The client cancelled a SASL exchange with `*` (RFC 5034 section 4).
    Cancelled,
}

/// What the session needs from the driver next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// All buffered input is handled: write the pending output, then read more.
    NeedInput,
    /// The unsent output has reached the bound ([`ServerSession::limit_output`]): write it
    /// before polling again. Commands still buffered wait, so a client that pipelines commands
    /// and never reads cannot make the output grow without bound.
    Flush,
    /// Check the credential and open (and lock) the maildrop; answer with
    /// [`ServerSession::authenticated`] or [`ServerSession::auth_failed`].
    Authenticate { user: String, credential: Credential },
    /// A SASL exchange starts (RFC 5034): run the mechanism and answer with
    /// [`ServerSession::sasl_challenge`], [`ServerSession::authenticated`] or
    /// [`ServerSession::auth_failed`].
    SaslStart { mechanism: String, initial: Option<Secret<Vec<u8>>> },
    /// The client answered a challenge; answer as for [`Event::SaslStart`].
    SaslResponse(Secret<Vec<u8>>),
    /// The client cancelled the exchange with `*`: answer with [`ServerSession::auth_failed`]
    /// ([`AuthFailure::Cancelled`], after counting it as a failed login when the exchange had
    /// told the client something about the account, such as a SCRAM salt).
    SaslCancelled,
    /// Send a message: open it, then call [`ServerSession::begin_message`] and stream it through
    /// the returned encoder, or call [`ServerSession::message_unavailable`].
    Retrieve { index: usize, top: Option<u64> },
    /// `+OK` to STLS is in the output: write it, discard everything read so far, run the TLS
    /// handshake and call [`ServerSession::tls_established`] (or close on failure).
    StartTls,
    /// The client sent QUIT in the TRANSACTION state: the session is in UPDATE. Remove these
    /// messages (0-based indexes into the listing), release the maildrop, and call
    /// [`ServerSession::committed`].
    Commit { deleted: Vec<usize>, retrieved: Vec<usize> },
    /// Write the pending output and close the connection. Nothing is to be deleted.
    Close,
}

/// Counters for the end-of-session log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub listed: usize,
    pub retrieved: usize,
    pub deleted: usize,
    pub commands: u64,
}

#[derive(Debug)]
enum State {
    Authorization {
        user: Option<String>,
    },
    /// Waiting for the driver to check credentials (or run a SASL step).
    Authenticating,
    /// A SASL challenge was sent; the next line is the client's response.
    SaslResponse,
    /// Waiting for the TLS handshake.
    StartingTls,
    Transaction(Txn),
    /// QUIT received in TRANSACTION; waiting for the deletions to be applied.
    Update,
    Closed,
}

/// The TRANSACTION state's data.
#[derive(Debug)]
struct Txn {
    listing: Listing,
    deleted: Vec<bool>,
    /// Sent in full with RETR in this session.
    retrieved: Vec<bool>,
    expire: Option<Expire>,
    login_delay: Option<u32>,
}

impl Txn {
    /// The index of message `n` if it exists and is not marked deleted.
    fn live(&self, n: MsgNum) -> Option<usize> {
        let i = n.index();
        (i < self.listing.entries.len() && !self.deleted[i]).then_some(i)
    }

    /// Count and octets of the messages not marked deleted.
    fn totals(&self) -> (usize, u64) {
        self.live_entries().fold((0, 0), |(c, s), (_, e)| (c + 1, s + e.size))
    }

    fn live_entries(&self) -> impl Iterator<Item = (usize, &ListingEntry)> {
        self.listing.entries.iter().enumerate().filter(|(i, _)| !self.deleted[*i])
    }
}

#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    /// `config.sasl` has a bearer mechanism, whose `AUTH` line may be long (see `line_limit`).
    bearer_offered: bool,
    state: State,
    decoder: LineDecoder,
    out: BytesMut,
    user: Option<String>,
    auth_failures: u32,
    bad_commands: u32,
    quit: bool,
    utf8: bool,
    stats: SessionStats,
    /// See [`Self::limit_output`].
    output_limit: usize,
}

/// The default bound of unsent output (`[limits] max_unsent_output`).
pub const DEFAULT_OUTPUT_LIMIT: usize = 1 << 20;

const NO_SUCH_MESSAGE: &str = "no such message";
const WRONG_STATE: &str = "command not valid in this state";

impl ServerSession {
    /// A new session; the greeting is already in the output.
    pub fn new(config: SessionConfig) -> Self {
        let mut out = BytesMut::new();
        match &config.apop_timestamp {
            Some(ts) => response::ok_fmt(&mut out, format_args!("{} {ts}", config.greeting)),
            None => response::ok(&mut out, &config.greeting),
        }
        Self {
            bearer_offered: config.sasl.iter().any(|m| is_bearer(m)),
            config,
            state: State::Authorization { user: None },
            decoder: LineDecoder::new(MAX_COMMAND_LINE),
            out,
            user: None,
            auth_failures: 0,
            bad_commands: 0,
            quit: false,
            utf8: false,
            stats: SessionStats::default(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }

    /// Stop handling buffered commands (return [`Event::Flush`]) while this many octets of
    /// output are unsent (at least one answer is always produced).
    pub fn limit_output(&mut self, octets: usize) {
        self.output_limit = octets.max(1);
    }

    /// Bytes received from the client.
    pub fn feed(&mut self, data: &[u8]) {
        // Nothing received while TLS is being set up, or after the end, may be interpreted.
        if matches!(self.state, State::StartingTls | State::Closed) {
            return;
        }
        self.decoder.feed(data);
    }

    /// The pending output, for writing to the peer.
    pub fn take_output(&mut self) -> BytesMut {
        self.out.split()
    }

    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// The authenticated user, once logged in (and the name given, while authenticating).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    pub fn is_tls(&self) -> bool {
        self.config.tls_active
    }

    /// Whether the session is in TRANSACTION (or UPDATE), i.e. holds a maildrop.
    pub fn holds_maildrop(&self) -> bool {
        matches!(self.state, State::Transaction(_) | State::Update)
    }

    /// Whether the client ended the session with QUIT.
    pub fn quit_received(&self) -> bool {
        self.quit
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The next thing the driver must do.
    pub fn poll(&mut self) -> Event {
        loop {
            match self.state {
                State::Closed => return Event::Close,
                // The driver answers these before polling again; if it does not, stop safely.
                State::Authenticating | State::StartingTls | State::Update => return Event::Close,
                State::Authorization { .. } | State::Transaction(_) | State::SaslResponse => {}
            }
            if self.out.len() >= self.output_limit {
                return Event::Flush;
            }
            self.decoder.set_max(self.line_limit());
            let Some(event) = self.decoder.next_event() else {
                return Event::NeedInput;
            };
            match event {
                LineEvent::Line(line) if matches!(self.state, State::SaslResponse) => {
                    if let Some(ev) = self.sasl_line(&line) {
                        return ev;
                    }
                }
                LineEvent::Line(line) => {
                    self.stats.commands += 1;
                    if let Some(ev) = self.handle_line(&line) {
                        return ev;
                    }
                }
                LineEvent::TooLong => self.bad_command("line too long"),
                LineEvent::Overflow => {
                    response::err(&mut self.out, None, "line too long, closing connection");
                    self.close();
                }
            }
        }
    }

    /// The longest line accepted now: a SASL response, or (where a bearer mechanism is
    /// offered) an `AUTH OAUTHBEARER`/`AUTH XOAUTH2` command with its token as the initial
    /// response, may be up to [`MAX_SASL_LINE`]; every other command is held to RFC 2449's
    /// 255 octets (checked in `handle_line`).
    fn line_limit(&self) -> usize {
        match self.state {
            State::SaslResponse => MAX_SASL_LINE,
            State::Authorization { .. } if self.bearer_offered => MAX_SASL_LINE,
            _ => MAX_COMMAND_LINE,
        }
    }

    fn bad_command(&mut self, text: &str) {
        self.bad_commands += 1;
        if self.bad_commands >= MAX_BAD_COMMANDS {
            response::err(&mut self.out, None, "too many invalid commands, closing connection");
            self.close();
        } else {
            response::err(&mut self.out, None, text);
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.decoder.clear();
    }

    /// A line answering a SASL challenge: `*` cancels (RFC 5034 section 4), otherwise base64.
    fn sasl_line(&mut self, line: &[u8]) -> Option<Event> {
        if line == b"*" {
            self.state = State::Authenticating;
            return Some(Event::SaslCancelled);
        }
        match base64_decode(line) {
            Some(v) => {
                self.state = State::Authenticating;
                Some(Event::SaslResponse(Secret::new(v)))
            }
            None => {
                self.state = State::Authorization { user: None };
                response::err(&mut self.out, None, "the response is not valid base64; authentication aborted");
                None
            }
        }
    }

    fn handle_line(&mut self, line: &[u8]) -> Option<Event> {
        if line.len() > MAX_COMMAND_LINE && !long_auth_line(line) {
            self.bad_command("line too long");
            return None;
        }
        let cmd = match command::parse(line) {
            Ok(cmd) => cmd,
            Err(e) => {
                let text = match e {
                    ParseError::Empty => "empty command",
                    ParseError::Unknown => "unknown command",
                    ParseError::MissingArgument => "missing argument",
                    ParseError::TooManyArguments => "too many arguments",
                    ParseError::BadNumber => "invalid message number",
                    ParseError::BadArgument => "invalid argument",
                };
                self.bad_command(text);
                return None;
            }
        };
        self.bad_commands = 0;
        let out = &mut self.out;
        match (&mut self.state, cmd) {
            (_, Command::Capa) => {
                self.write_capa();
                None
            }
            (State::Authorization { .. }, Command::Quit) => {
                self.quit = true;
                response::ok(out, "Pillarbox signing off");
                self.close();
                None
            }
            (State::Authorization { user }, Command::User(name)) => {
                if !self.config.tls_active && !self.config.cleartext_allowed {
                    *user = None;
                    response::err(out, Some(RespCode::Auth), cleartext_refusal(self.config.stls_available));
                } else {
                    *user = Some(name);
                    response::ok(out, "send PASS");
                }
                None
            }
            (State::Authorization { user }, Command::Pass(secret)) => match user.take() {
                None => {
                    response::err(out, None, "send USER first");
                    None
                }
                Some(name) => {
                    self.user = Some(name.clone());
                    self.state = State::Authenticating;
                    Some(Event::Authenticate { user: name, credential: Credential::Password(secret) })
                }
            },
            (State::Authorization { user }, Command::Apop { name, digest }) => match &self.config.apop_timestamp {
                None => {
                    response::err(out, None, "APOP is not available");
                    None
                }
                Some(ts) => {
                    *user = None;
                    let credential = Credential::Apop { timestamp: ts.clone(), digest };
                    self.user = Some(name.clone());
                    self.state = State::Authenticating;
                    Some(Event::Authenticate { user: name, credential })
                }
            },
            (State::Authorization { .. }, Command::Auth(None)) => {
                // Not in RFC 5034, but older clients (Outlook) send a bare AUTH to list mechanisms.
                response::ok(out, "SASL mechanisms follow");
                for m in &self.config.sasl {
                    response::line(out, m);
                }
                response::end(out);
                None
            }
            (State::Authorization { user }, Command::Auth(Some((mech, initial)))) => {
                *user = None;
                let mechanism = mech.to_ascii_uppercase();
                if !self.config.sasl.contains(&mechanism) {
                    let cleartext = matches!(mechanism.as_str(), "PLAIN" | "LOGIN");
                    if cleartext && !self.config.tls_active {
                        response::err(out, Some(RespCode::Auth), cleartext_refusal(self.config.stls_available));
                    } else {
                        response::err(out, None, "unsupported SASL mechanism");
                    }
                    return None;
                }
                let initial = match initial.as_deref() {
                    None => None,
                    // RFC 5034 section 4: "=" is an empty initial response.
                    Some("=") => Some(Secret::new(Vec::new())),
                    Some(b64) => match base64_decode(b64.as_bytes()) {
                        Some(v) => Some(Secret::new(v)),
                        None => {
                            response::err(out, None, "the initial response is not valid base64");
                            return None;
                        }
                    },
                };
                self.state = State::Authenticating;
                Some(Event::SaslStart { mechanism, initial })
            }
            (State::Authorization { .. }, Command::Utf8) => {
                self.utf8 = true;
                response::ok(out, "UTF-8 user names and passwords are welcome");
                None
            }
            (State::Authorization { user }, Command::Stls) => {
                if self.config.tls_active {
                    response::err(out, None, "already using TLS");
                    None
                } else if !self.config.stls_available {
                    response::err(out, None, "TLS is not available");
                    None
                } else {
                    *user = None;
                    response::ok(out, "begin TLS negotiation");
                    // RFC 2595 section 4 and the STARTTLS injection class: nothing that arrived in
                    // plaintext after the STLS line may be interpreted inside TLS.
                    self.decoder.clear();
                    self.state = State::StartingTls;
                    Some(Event::StartTls)
                }
            }
            (State::Transaction(_), Command::Stls) => {
                response::err(out, None, "STLS is only valid before login");
                None
            }
            (State::Transaction(txn), cmd) => {
                let event = Self::transaction(out, &mut self.stats, txn, cmd);
                if matches!(event, Some(Event::Commit { .. })) {
                    self.quit = true;
                    self.state = State::Update;
                }
                event
            }
            (State::Authorization { .. }, _) => {
                response::err(out, None, WRONG_STATE);
                None
            }
            (State::Authenticating | State::SaslResponse | State::StartingTls | State::Update | State::Closed, _) => {
                None
            }
        }
    }

    fn transaction(out: &mut BytesMut, stats: &mut SessionStats, txn: &mut Txn, cmd: Command) -> Option<Event> {
        match cmd {
            Command::Stat => {
                let (count, size) = txn.totals();
                response::ok_fmt(out, format_args!("{count} {size}"));
            }
            Command::List(None) => {
                let (count, size) = txn.totals();
                response::ok_fmt(out, format_args!("{count} messages ({size} octets)"));
                for (i, e) in txn.live_entries() {
                    response::line_fmt(out, format_args!("{} {}", i + 1, e.size));
                }
                response::end(out);
            }
            Command::List(Some(n)) => match txn.live(n) {
                Some(i) => response::ok_fmt(out, format_args!("{n} {}", txn.listing.entries[i].size)),
                None => response::err(out, None, NO_SUCH_MESSAGE),
            },
            Command::Uidl(None) => {
                response::ok(out, "unique-id listing follows");
                for (i, e) in txn.live_entries() {
                    response::line_fmt(out, format_args!("{} {}", i + 1, e.uid));
                }
                response::end(out);
            }
            Command::Uidl(Some(n)) => match txn.live(n) {
                Some(i) => response::ok_fmt(out, format_args!("{n} {}", txn.listing.entries[i].uid)),
                None => response::err(out, None, NO_SUCH_MESSAGE),
            },
            Command::Retr(n) => match txn.live(n) {
                Some(index) => return Some(Event::Retrieve { index, top: None }),
                None => response::err(out, None, NO_SUCH_MESSAGE),
            },
            Command::Top(n, lines) => match txn.live(n) {
                Some(index) => return Some(Event::Retrieve { index, top: Some(lines) }),
                None => response::err(out, None, NO_SUCH_MESSAGE),
            },
            Command::Dele(n) => match txn.live(n) {
                Some(i) => {
                    txn.deleted[i] = true;
                    response::ok_fmt(out, format_args!("message {n} deleted"));
                }
                None => response::err(out, None, NO_SUCH_MESSAGE),
            },
            Command::Noop => response::ok(out, ""),
            Command::Rset => {
                txn.deleted.iter_mut().for_each(|d| *d = false);
                let (count, size) = txn.totals();
                response::ok_fmt(out, format_args!("maildrop has {count} messages ({size} octets)"));
            }
            Command::Quit => {
                // EXPIRE 0 (RFC 2449 section 6.7): what was retrieved goes at QUIT, DELE or not.
                let expire_now = txn.expire == Some(Expire::Days(0));
                let deleted: Vec<usize> =
                    (0..txn.deleted.len()).filter(|&i| txn.deleted[i] || (expire_now && txn.retrieved[i])).collect();
                let retrieved: Vec<usize> = (0..txn.retrieved.len()).filter(|&i| txn.retrieved[i]).collect();
                stats.deleted = deleted.len();
                return Some(Event::Commit { deleted, retrieved });
            }
            Command::User(_) | Command::Pass(_) | Command::Apop { .. } | Command::Auth(_) | Command::Utf8 => {
                response::err(out, None, "already authenticated");
            }
            Command::Capa | Command::Stls => response::err(out, None, WRONG_STATE),
        }
        None
    }

    fn write_capa(&mut self) {
        let out = &mut self.out;
        response::ok(out, "capability list follows");
        for cap in ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"] {
            response::line(out, cap);
        }
        // USER stays listed after login: RFC 2449 section 5 asks that capabilities which remain
        // true keep being announced, and clients re-read CAPA after login.
        if self.config.tls_active || self.config.cleartext_allowed {
            response::line(out, "USER");
        }
        if !self.config.sasl.is_empty() {
            response::line(out, &format!("SASL {}", self.config.sasl.join(" ")));
        }
        if matches!(self.state, State::Authorization { .. }) && self.config.stls_available && !self.config.tls_active {
            response::line(out, "STLS");
        }
        match (&self.state, self.config.login_delay) {
            (State::Transaction(txn), _) => {
                if let Some(d) = txn.login_delay {
                    response::line(out, &format!("LOGIN-DELAY {d}"));
                }
            }
            (_, Some((d, per_user))) => {
                let user = if per_user { " USER" } else { "" };
                response::line(out, &format!("LOGIN-DELAY {d}{user}"));
            }
            (_, None) => {}
        }
        if matches!(self.state, State::Authorization { .. }) {
            // RFC 6856 section 2: UTF8 is offered before login; USER means it applies to names.
            response::line(out, "UTF8 USER");
        }
        match (&self.state, self.config.expire) {
            (State::Transaction(txn), _) => {
                if let Some(e) = txn.expire {
                    response::line(out, &format!("EXPIRE {e}"));
                }
            }
            (_, Some(capa)) => {
                let user = if capa.per_user { " USER" } else { "" };
                response::line(out, &format!("EXPIRE {}{user}", capa.default));
            }
            (_, None) => {}
        }
        if let Some(imp) = &self.config.implementation {
            response::line(out, &format!("IMPLEMENTATION {imp}"));
        }
        response::end(out);
    }

    /// The driver's answer to [`Event::Authenticate`] (or to a SASL exchange that succeeded):
    /// `user` is the account as it logged in (its canonical name), which [`Self::user`] reports
    /// from then on, whatever name or mechanism the client used.
    pub fn authenticated(&mut self, user: &str, listing: Listing, login: Login) {
        if !matches!(self.state, State::Authenticating) {
            return;
        }
        self.user = Some(user.to_owned());
        let (count, size) = (listing.entries.len(), listing.entries.iter().map(|e| e.size).sum::<u64>());
        response::ok_fmt(&mut self.out, format_args!("maildrop has {count} messages ({size} octets)"));
        self.stats.listed = count;
        self.state = State::Transaction(Txn {
            listing,
            deleted: vec![false; count],
            retrieved: vec![false; count],
            expire: login.expire,
            login_delay: login.login_delay,
        });
    }

    /// A SASL step's challenge: sends `+ base64` and waits for the client's response line.
    pub fn sasl_challenge(&mut self, challenge: &[u8]) {
        if !matches!(self.state, State::Authenticating) {
            return;
        }
        self.out.extend_from_slice(b"+ ");
        base64_encode(challenge, &mut self.out);
        self.out.extend_from_slice(b"\r\n");
        self.state = State::SaslResponse;
    }

    /// The driver's answer to [`Event::Authenticate`] or a SASL step when the login fails.
    pub fn auth_failed(&mut self, failure: AuthFailure) {
        if !matches!(self.state, State::Authenticating) {
            return;
        }
        self.user = None;
        let (code, text) = match failure {
            AuthFailure::Credentials => (Some(RespCode::Auth), "authentication failed"),
            AuthFailure::InUse => (Some(RespCode::InUse), "maildrop is locked by another session; try again later"),
            AuthFailure::Temporary => (Some(RespCode::SysTemp), "temporary server problem; try again later"),
            AuthFailure::Permanent => {
                (Some(RespCode::SysPerm), "this maildrop cannot be opened; contact your administrator")
            }
            AuthFailure::LoginDelay => (Some(RespCode::LoginDelay), "you logged in too recently; try again later"),
            AuthFailure::Disabled => {
                (Some(RespCode::SysPerm), "POP3 access to this account is turned off; contact your administrator")
            }
            AuthFailure::TooManyAttempts => {
                (Some(RespCode::SysTemp), "too many logins to this account are in progress; try again later")
            }
            AuthFailure::Cancelled => (None, "authentication cancelled"),
        };
        response::err(&mut self.out, code, text);
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            response::err(&mut self.out, None, "too many failed logins, closing connection");
            self.close();
        } else {
            self.state = State::Authorization { user: None };
        }
    }

    /// The driver opened the message of an [`Event::Retrieve`]: writes `+OK` and returns the
    /// encoder to stream the message through (into [`Self::output_mut`]), then `finish` it there.
    pub fn begin_message(&mut self, index: usize, top: Option<u64>) -> MessageEncoder {
        let size = match &mut self.state {
            State::Transaction(txn) => {
                if top.is_none()
                    && let Some(r) = txn.retrieved.get_mut(index)
                {
                    *r = true;
                }
                txn.listing.entries.get(index).map_or(0, |e| e.size)
            }
            _ => 0,
        };
        match top {
            None => {
                self.stats.retrieved += 1;
                response::ok_fmt(&mut self.out, format_args!("{size} octets"));
                MessageEncoder::retr()
            }
            Some(n) => {
                response::ok(&mut self.out, "top of message follows");
                MessageEncoder::top(n)
            }
        }
    }

    /// The output buffer, for streaming message content through a [`MessageEncoder`].
    pub fn output_mut(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// The message of an [`Event::Retrieve`] could not be opened (removed by another program).
    pub fn message_unavailable(&mut self) {
        response::err(&mut self.out, Some(RespCode::SysTemp), "message is no longer available");
    }

    /// Whether the client sent UTF8 (RFC 6856).
    pub fn utf8(&self) -> bool {
        self.utf8
    }

    /// The TLS handshake after STLS succeeded: the session starts over in AUTHORIZATION with the
    /// SASL mechanisms usable over TLS.
    pub fn tls_established(&mut self, sasl: Vec<String>) {
        if matches!(self.state, State::StartingTls) {
            self.bearer_offered = sasl.iter().any(|m| is_bearer(m));
            self.config.sasl = sasl;
            self.config.tls_active = true;
            self.config.stls_available = false;
            self.decoder.clear();
            self.state = State::Authorization { user: None };
        }
    }

    /// The driver's answer to [`Event::Commit`].
    pub fn committed(&mut self, result: Result<(), ()>) {
        if !matches!(self.state, State::Update) {
            return;
        }
        match result {
            Ok(()) => response::ok(&mut self.out, "Pillarbox signing off"),
            Err(()) => response::err(&mut self.out, Some(RespCode::SysTemp), "some deleted messages were not removed"),
        }
        self.close();
    }

    /// Autologout (RFC 1939 section 3): the session ends without entering UPDATE.
    pub fn idle_timeout(&mut self) {
        if !self.is_closed() {
            response::err(&mut self.out, None, "autologout: idle for too long");
            self.close();
        }
    }

    /// An administrator ended the session: it ends without entering UPDATE (nothing marked
    /// for deletion is deleted).
    pub fn ended_by_administrator(&mut self) {
        if !self.is_closed() {
            response::err(&mut self.out, Some(RespCode::SysPerm), "session ended by the administrator");
            self.close();
        }
    }

    /// The server is shutting down: the session ends without entering UPDATE.
    pub fn shutdown(&mut self) {
        if !self.is_closed() {
            response::err(&mut self.out, Some(RespCode::SysTemp), "server shutting down; try again later");
            self.close();
        }
    }
}

/// The bearer mechanisms, whose tokens do not fit a 255-octet command line.
fn is_bearer(mechanism: &str) -> bool {
    matches!(mechanism, "OAUTHBEARER" | "XOAUTH2")
}

/// `AUTH OAUTHBEARER ...` or `AUTH XOAUTH2 ...`: the one command allowed past 255 octets.
fn long_auth_line(line: &[u8]) -> bool {
    let mut words = line.splitn(3, |&b| b == b' ');
    let (Some(cmd), Some(mech)) = (words.next(), words.next()) else { return false };
    cmd.eq_ignore_ascii_case(b"AUTH") && std::str::from_utf8(mech).is_ok_and(|m| is_bearer(&m.to_ascii_uppercase()))
}

fn cleartext_refusal(stls: bool) -> &'static str {
    if stls {
        "plaintext login is not allowed on an unencrypted connection; use STLS first, or port 995"
    } else {
        "plaintext login is not allowed on an unencrypted connection; use port 995 (TLS)"
    }
}

/// Standard base64 with padding (RFC 4648 section 4), as SASL in POP3 uses.
fn base64_encode(data: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(BASE64.encode(data).as_bytes());
}

/// Strict base64 decoding (canonical padding, no whitespace); `None` for anything invalid.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}
