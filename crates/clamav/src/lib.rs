//! A client of ClamAV's scanning daemon, `clamd`, over its `INSTREAM` protocol: the message is
//! sent as it arrives, in chunks of at most [`CHUNK`] octets (each preceded by its length as a
//! 4-octet big-endian number, the stream ended by a zero length), and clamd answers
//! `stream: OK`, `stream: NAME FOUND` or `... ERROR` (a message over its `StreamMaxLength`,
//! say). Commands use the `z` form, whose replies end with a NUL.
//!
//! The client is blocking, with a timeout on every read and write: fetch scans on a thread of
//! its own beside the download, the server on its blocking pool.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The largest chunk sent at once (clamd's own clients send 2 KiB to 1 MiB; its limit on one
/// chunk is its StreamMaxLength).
pub const CHUNK: usize = 64 * 1024;

/// How long a read or write to clamd may take before it counts as unreachable: a scan of a large
/// message with many archives can take seconds, so this is generous.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Where clamd listens: its local socket (`/run/clamav/clamd.ctl`) or `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clamd {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for Clamd {
    type Err = String;

    /// A path (starting with `/`), or `HOST:PORT` (`[::1]:3310` for an IPv6 address).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        let port = s.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(p))) if !host.is_empty() && p != 0 => Ok(Self::Tcp(s.to_owned())),
            _ => Err(format!(
                "{s:?} is neither clamd's socket (an absolute path such as /run/clamav/clamd.ctl) nor HOST:PORT"
            )),
        }
    }
}

impl fmt::Display for Clamd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "{}", p.display()),
            Self::Tcp(a) => f.write_str(a),
        }
    }
}

/// What clamd found in a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// The signature's name (`Eicar-Test-Signature`): printable ASCII, at most [`MAX_NAME`]
    /// characters, so that it can go into a reply line, a header or a log as it is.
    Infected(String),
}

/// The longest signature name kept (clamd's are well under it).
pub const MAX_NAME: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// clamd could not be reached, or stopped answering: the message was not scanned.
    #[error("clamd at {at} is unavailable: {why}")]
    Unavailable { at: String, why: String },
    /// clamd answered with an error (a message over its StreamMaxLength, say): not scanned.
    #[error("clamd at {at} could not scan the message: {reply}")]
    Failed { at: String, reply: String },
}

/// A connection to clamd, for one command.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The longest reply read (a signature name is short; anything longer is not clamd).
const MAX_REPLY: usize = 4096;

/// Scans messages with one clamd.
#[derive(Clone, Debug)]
pub struct Scanner {
    clamd: Clamd,
}

impl Scanner {
    pub fn new(clamd: Clamd) -> Self {
        Self { clamd }
    }

    fn unavailable(&self, why: impl fmt::Display) -> ScanError {
        ScanError::Unavailable { at: self.clamd.to_string(), why: why.to_string() }
    }

    fn connect(&self) -> Result<Conn, ScanError> {
        let conn = match &self.clamd {
            Clamd::Unix(p) => UnixStream::connect(p).and_then(|s| {
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                Ok(Conn::Unix(s))
            }),
            Clamd::Tcp(a) => {
                use std::net::ToSocketAddrs;
                a.to_socket_addrs()
                    .and_then(|mut addrs| {
                        addrs.next().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
                    })
                    .and_then(|addr| TcpStream::connect_timeout(&addr, TIMEOUT))
                    .and_then(|s| {
                        s.set_read_timeout(Some(TIMEOUT))?;
                        s.set_write_timeout(Some(TIMEOUT))?;
                        s.set_nodelay(true)?;
                        Ok(Conn::Tcp(s))
                    })
            }
        };
        conn.map_err(|e| self.unavailable(e))
    }

    /// One command and its reply (without the NUL).
    fn command(&self, command: &str) -> Result<String, ScanError> {
        let mut conn = self.connect()?;
        conn.write_all(format!("z{command}\0").as_bytes()).map_err(|e| self.unavailable(e))?;
        read_reply(&mut conn).map_err(|e| self.unavailable(e))
    }

    /// Whether clamd answers (`PING`, `PONG`).
    pub fn ping(&self) -> Result<(), ScanError> {
        match self.command("PING")?.as_str() {
            "PONG" => Ok(()),
            other => Err(self.unavailable(format!("it answered {other:?} to PING"))),
        }
    }

    /// clamd's version and its signatures' (`ClamAV 1.4.6/27000/...`).
    pub fn version(&self) -> Result<String, ScanError> {
        self.command("VERSION")
    }

    /// Start scanning a message, to be sent with [`Scan::write`] as it arrives.
    pub fn start(&self) -> Result<Scan, ScanError> {
        let mut conn = self.connect()?;
        conn.write_all(b"zINSTREAM\0").map_err(|e| self.unavailable(e))?;
        Ok(Scan { conn, scanner: self.clone(), sent: 0 })
    }

    /// Scan a whole message held in memory.
    pub fn scan(&self, message: &[u8]) -> Result<Verdict, ScanError> {
        let mut scan = self.start()?;
        scan.write(message)?;
        scan.finish()
    }
}

/// A message being scanned.
pub struct Scan {
    conn: Conn,
    scanner: Scanner,
    sent: u64,
}

impl Scan {
    /// More of the message, in chunks of at most [`CHUNK`] octets.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ScanError> {
        for chunk in data.chunks(CHUNK) {
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX).to_be_bytes();
            let sent = self.conn.write_all(&len).and_then(|()| self.conn.write_all(chunk));
            if let Err(e) = sent {
                return Err(self.refused_or(e));
            }
            self.sent += chunk.len() as u64;
        }
        Ok(())
    }

    /// How many octets were sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The message is whole: clamd's verdict.
    pub fn finish(mut self) -> Result<Verdict, ScanError> {
        if let Err(e) = self.conn.write_all(&[0, 0, 0, 0]) {
            return Err(self.refused_or(e));
        }
        let reply = read_reply(&mut self.conn).map_err(|e| self.scanner.unavailable(e))?;
        verdict(&reply).ok_or_else(|| ScanError::Failed { at: self.scanner.clamd.to_string(), reply })
    }

    /// A write failed: clamd may have answered first (and closed), saying why (a message over its
    /// StreamMaxLength); else it is unavailable.
    fn refused_or(&mut self, e: io::Error) -> ScanError {
        match read_reply(&mut self.conn) {
            Ok(reply) if !reply.is_empty() => ScanError::Failed { at: self.scanner.clamd.to_string(), reply },
            _ => self.scanner.unavailable(e),
        }
    }
}

/// A reply up to its NUL (or the end of the connection).
fn read_reply(conn: &mut Conn) -> io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(end) = reply.iter().position(|b| *b == 0) {
            reply.truncate(end);
            break;
        }
        if reply.len() > MAX_REPLY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "an overlong reply"));
        }
    }
    if reply.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "it closed the connection without a reply"));
    }
    // What clamd says ends up in replies to mail servers and in logs: printable ASCII only.
    let text = String::from_utf8_lossy(&reply);
    Ok(text.trim_end_matches(['\n', '\r']).chars().filter(|c| c.is_ascii_graphic() || *c == ' ').collect())
}

/// `stream: OK` or `stream: NAME FOUND`; `None` for anything else (an error).
fn verdict(reply: &str) -> Option<Verdict> {
    let rest = reply.strip_prefix("stream: ")?;
    if rest == "OK" {
        return Some(Verdict::Clean);
    }
    let name = rest.strip_suffix(" FOUND")?;
    (!name.is_empty()).then(|| Verdict::Infected(name.chars().take(MAX_NAME).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_addresses_and_replies() {
        assert_eq!("/run/clamav/clamd.ctl".parse(), Ok(Clamd::Unix("/run/clamav/clamd.ctl".into())));
        assert_eq!("127.0.0.1:3310".parse(), Ok(Clamd::Tcp("127.0.0.1:3310".into())));
        assert_eq!("[::1]:3310".parse(), Ok(Clamd::Tcp("[::1]:3310".into())));
        for bad in ["clamd.ctl", "host", "host:", ":3310", "host:0", "host:99999"] {
            assert!(bad.parse::<Clamd>().is_err(), "{bad}");
        }
        assert_eq!(verdict("stream: OK"), Some(Verdict::Clean));
        assert_eq!(verdict("stream: Eicar-Signature FOUND"), Some(Verdict::Infected("Eicar-Signature".into())));
        assert_eq!(verdict("INSTREAM size limit exceeded. ERROR"), None);
        assert_eq!(verdict("stream:  FOUND"), None);
        let long = format!("stream: {} FOUND", "x".repeat(500));
        assert_eq!(verdict(&long), Some(Verdict::Infected("x".repeat(MAX_NAME))));
    }
}
