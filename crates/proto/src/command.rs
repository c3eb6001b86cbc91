//! Decoding of POP3 command lines (RFC 1939 sections 4-7, RFC 2449 section 5, RFC 2595 section 4,
//! RFC 5034 section 4 for the bare `AUTH` listing).
//!
//! Keywords are case-insensitive; arguments are separated by spaces. `PASS` takes the rest of the
//! line verbatim, spaces included (RFC 1939 section 7 allows this, and real passwords contain
//! spaces). Numbers are plain decimal digits without sign.

use crate::types::{MsgNum, Secret};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(Secret<Vec<u8>>),
    Apop {
        name: String,
        digest: Secret<String>,
    },
    /// `AUTH` alone (list mechanisms) or `AUTH mechanism [initial-response]` (RFC 5034).
    Auth(Option<(String, Option<String>)>),
    /// RFC 6856: the client will use UTF-8 in user names and passwords.
    Utf8,
    Stat,
    List(Option<MsgNum>),
    Retr(MsgNum),
    Dele(MsgNum),
    Noop,
    Rset,
    Top(MsgNum, u64),
    Uidl(Option<MsgNum>),
    Quit,
    Capa,
    Stls,
}

impl Command {
    /// The keyword, for logs.
    pub fn keyword(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Apop { .. } => "APOP",
            Command::Auth(_) => "AUTH",
            Command::Utf8 => "UTF8",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Top(..) => "TOP",
            Command::Uidl(_) => "UIDL",
            Command::Quit => "QUIT",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty command")]
    Empty,
    #[error("unknown command")]
    Unknown,
    #[error("missing argument")]
    MissingArgument,
    #[error("too many arguments")]
    TooManyArguments,
    #[error("invalid message number")]
    BadNumber,
    #[error("invalid argument")]
    BadArgument,
}

pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let (keyword, rest) = match memchr::memchr(b' ', line) {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    if keyword.is_empty() {
        return Err(if line.iter().all(|&b| b == b' ') { ParseError::Empty } else { ParseError::Unknown });
    }
    if keyword.len() > 4 {
        return Err(ParseError::Unknown);
    }
    let mut kw = [0u8; 4];
    for (dst, src) in kw.iter_mut().zip(keyword) {
        *dst = src.to_ascii_uppercase();
    }
    let kw = &kw[..keyword.len()];

    // PASS keeps its argument verbatim, spaces included.
    if kw == b"PASS" {
        return match rest {
            Some(p) if !p.is_empty() => Ok(Command::Pass(Secret::new(p.to_vec()))),
            _ => Err(ParseError::MissingArgument),
        };
    }

    let args: Vec<&[u8]> =
        rest.map(|r| r.split(|&b| b == b' ').filter(|a| !a.is_empty()).collect()).unwrap_or_default();
    let arity = |min: usize, max: usize| -> Result<(), ParseError> {
        if args.len() < min {
            Err(ParseError::MissingArgument)
        } else if args.len() > max {
            Err(ParseError::TooManyArguments)
        } else {
            Ok(())
        }
    };
    let msg = |i: usize| args.get(i).map(|a| parse_msgnum(a)).transpose();
    let no_args = |c: Command| arity(0, 0).map(|()| c);

    Ok(match kw {
        b"USER" => {
            arity(1, 1)?;
            Command::User(text_arg(args[0])?)
        }
        b"APOP" => {
            arity(2, 2)?;
            let digest = args[1];
            if digest.len() != 32 || !digest.iter().all(u8::is_ascii_hexdigit) {
                return Err(ParseError::BadArgument);
            }
            let digest = Secret::new(String::from_utf8_lossy(digest).to_ascii_lowercase());
            Command::Apop { name: text_arg(args[0])?, digest }
        }
        b"AUTH" => {
            arity(0, 2)?;
            match args.first() {
                None => Command::Auth(None),
                Some(mech) => Command::Auth(Some((text_arg(mech)?, args.get(1).map(|a| text_arg(a)).transpose()?))),
            }
        }
        b"UTF8" => no_args(Command::Utf8)?,
        b"STAT" => no_args(Command::Stat)?,
        b"LIST" => {
            arity(0, 1)?;
            Command::List(msg(0)?)
        }
        b"RETR" => {
            arity(1, 1)?;
            Command::Retr(parse_msgnum(args[0])?)
        }
        b"DELE" => {
            arity(1, 1)?;
            Command::Dele(parse_msgnum(args[0])?)
        }
        b"NOOP" => no_args(Command::Noop)?,
        b"RSET" => no_args(Command::Rset)?,
        b"TOP" => {
            arity(2, 2)?;
            Command::Top(parse_msgnum(args[0])?, parse_u64(args[1]).ok_or(ParseError::BadArgument)?)
        }
        b"UIDL" => {
            arity(0, 1)?;
            Command::Uidl(msg(0)?)
        }
        b"QUIT" => no_args(Command::Quit)?,
        b"CAPA" => no_args(Command::Capa)?,
        b"STLS" => no_args(Command::Stls)?,
        _ => return Err(ParseError::Unknown),
    })
}

/// An argument that must be printable UTF-8 without control characters.
fn text_arg(a: &[u8]) -> Result<String, ParseError> {
    let s = std::str::from_utf8(a).map_err(|_| ParseError::BadArgument)?;
    if s.chars().any(char::is_control) {
        return Err(ParseError::BadArgument);
    }
    Ok(s.to_owned())
}

fn parse_u64(a: &[u8]) -> Option<u64> {
    if a.is_empty() || a.len() > 19 || !a.iter().all(u8::is_ascii_digit) {
        return None;
    }
    a.iter().try_fold(0u64, |acc, &d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn parse_msgnum(a: &[u8]) -> Result<MsgNum, ParseError> {
    parse_u64(a).and_then(|n| u32::try_from(n).ok()).and_then(MsgNum::new).ok_or(ParseError::BadNumber)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, ParseError> {
        parse(s.as_bytes())
    }
    fn n(x: u32) -> MsgNum {
        MsgNum::new(x).expect("nonzero")
    }

    #[test]
    fn known_answers() {
        let table: Vec<(&str, Result<Command, ParseError>)> = vec![
            ("USER mrose", Ok(Command::User("mrose".into()))),
            ("user mrose", Ok(Command::User("mrose".into()))),
            ("USER", Err(ParseError::MissingArgument)),
            ("USER a b", Err(ParseError::TooManyArguments)),
            ("PASS secret with spaces", Ok(Command::Pass(Secret::new(b"secret with spaces".to_vec())))),
            ("PASS", Err(ParseError::MissingArgument)),
            ("PASS ", Err(ParseError::MissingArgument)),
            (
                "APOP mrose c4c9334bac560ecc979e58001b3e22fb",
                Ok(Command::Apop {
                    name: "mrose".into(),
                    digest: Secret::new("c4c9334bac560ecc979e58001b3e22fb".into()),
                }),
            ),
            ("APOP mrose xyz", Err(ParseError::BadArgument)),
            ("STAT", Ok(Command::Stat)),
            ("stat", Ok(Command::Stat)),
            ("STAT 1", Err(ParseError::TooManyArguments)),
            ("LIST", Ok(Command::List(None))),
            ("LIST 2", Ok(Command::List(Some(n(2))))),
            ("LIST 0", Err(ParseError::BadNumber)),
            ("LIST -1", Err(ParseError::BadNumber)),
            ("LIST +1", Err(ParseError::BadNumber)),
            ("LIST 4294967296", Err(ParseError::BadNumber)),
            ("LIST 99999999999999999999999", Err(ParseError::BadNumber)),
            ("RETR 1", Ok(Command::Retr(n(1)))),
            ("RETR", Err(ParseError::MissingArgument)),
            ("DELE 1", Ok(Command::Dele(n(1)))),
            ("NOOP", Ok(Command::Noop)),
            ("RSET", Ok(Command::Rset)),
            ("TOP 1 10", Ok(Command::Top(n(1), 10))),
            ("TOP 1 0", Ok(Command::Top(n(1), 0))),
            ("TOP 1", Err(ParseError::MissingArgument)),
            ("TOP 1 x", Err(ParseError::BadArgument)),
            ("UIDL", Ok(Command::Uidl(None))),
            ("UIDL 3", Ok(Command::Uidl(Some(n(3))))),
            ("QUIT", Ok(Command::Quit)),
            ("CAPA", Ok(Command::Capa)),
            ("STLS", Ok(Command::Stls)),
            ("AUTH", Ok(Command::Auth(None))),
            ("AUTH PLAIN", Ok(Command::Auth(Some(("PLAIN".into(), None))))),
            ("AUTH PLAIN AGFsaWNlAHB3", Ok(Command::Auth(Some(("PLAIN".into(), Some("AGFsaWNlAHB3".into())))))),
            ("AUTH PLAIN a b", Err(ParseError::TooManyArguments)),
            ("UTF8", Ok(Command::Utf8)),
            ("", Err(ParseError::Empty)),
            ("   ", Err(ParseError::Empty)),
            ("XYZZY", Err(ParseError::Unknown)),
            ("RETRIEVE 1", Err(ParseError::Unknown)),
            ("X:Y", Err(ParseError::Unknown)),
            (" STAT", Err(ParseError::Unknown)),
            ("USER a\u{7}b", Err(ParseError::BadArgument)),
        ];
        for (line, expected) in table {
            assert_eq!(p(line), expected, "{line:?}");
        }
    }

    #[test]
    fn invalid_utf8_and_nul_are_errors_not_panics() {
        assert_eq!(parse(b"USER \xff\xfe"), Err(ParseError::BadArgument));
        assert_eq!(parse(b"\0\0\0"), Err(ParseError::Unknown));
        assert_eq!(parse(b"ST\0T"), Err(ParseError::Unknown));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
