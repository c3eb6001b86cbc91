//! Validated protocol values: message numbers, unique-ids and redacted secrets.
//! A value of these types cannot hold data that is invalid on the wire (RFC 1939 sections 5 and 7).

use std::fmt;
use std::num::NonZeroU32;

use zeroize::Zeroize;

use crate::limits::MAX_UNIQUE_ID;

/// A message number as the client sees it: 1-based (RFC 1939 section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgNum(NonZeroU32);

impl MsgNum {
    /// The message number for a 0-based index into the session's listing.
    pub fn from_index(index: usize) -> Option<Self> {
        let n = u32::try_from(index.checked_add(1)?).ok()?;
        NonZeroU32::new(n).map(Self)
    }
    /// 0-based index into the listing.
    pub fn index(self) -> usize {
        self.0.get() as usize - 1
    }
    pub fn get(self) -> u32 {
        self.0.get()
    }
    pub fn new(n: u32) -> Option<Self> {
        NonZeroU32::new(n).map(Self)
    }
}

impl fmt::Display for MsgNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A UIDL unique-id: 1 to 70 octets, each in 0x21..=0x7E (RFC 1939 section 7).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UniqueId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UniqueIdError {
    #[error("unique-id is empty")]
    Empty,
    #[error("unique-id is longer than {MAX_UNIQUE_ID} octets")]
    TooLong,
    #[error("unique-id contains a byte outside 0x21-0x7E")]
    BadByte,
}

impl UniqueId {
    pub fn new(s: impl Into<String>) -> Result<Self, UniqueIdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(UniqueIdError::Empty);
        }
        if s.len() > MAX_UNIQUE_ID {
            return Err(UniqueIdError::TooLong);
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(UniqueIdError::BadByte);
        }
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UniqueId({})", self.0)
    }
}

impl fmt::Display for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret (password, APOP digest or secret, SASL payload). `Debug` never shows it and the
/// memory is wiped on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    /// Read the secret. Named so that every use is easy to find in review.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_id_rejects_space_control_and_length() {
        assert!(UniqueId::new("abc").is_ok());
        assert_eq!(UniqueId::new(""), Err(UniqueIdError::Empty));
        assert_eq!(UniqueId::new("a b"), Err(UniqueIdError::BadByte));
        assert_eq!(UniqueId::new("a\r"), Err(UniqueIdError::BadByte));
        assert_eq!(UniqueId::new("\u{e9}"), Err(UniqueIdError::BadByte));
        assert!(UniqueId::new("x".repeat(70)).is_ok());
        assert_eq!(UniqueId::new("x".repeat(71)), Err(UniqueIdError::TooLong));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new(String::from("hunter2"));
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn msgnum_index_roundtrip() {
        assert_eq!(MsgNum::from_index(0).map(MsgNum::get), Some(1));
        assert_eq!(MsgNum::new(7).map(MsgNum::index), Some(6));
        assert!(MsgNum::new(0).is_none());
    }
}

/// A local user name: 1 to 64 characters that are letters or digits (any script, RFC 6856) or
/// `. _ + @ -`, not starting with `.` or `-`; a user of a virtual domain is `name@domain`, the
/// name held to those 64 characters and the whole to 255 octets. Names are case-insensitive and
/// kept in lowercase. The rules keep a name safe as a single path component of a maildrop and as
/// a field of the user file. Callers apply SASLprep (RFC 4013) first, so equivalent spellings are
/// one name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid user name {0:?}: use 1 to 64 letters (of any script: müller and 用户 are fine) or digits, \
     and . _ + @ -, not starting with . or -; names are not case-sensitive"
)]
pub struct UserNameError(pub String);

impl UserName {
    /// The longest name (or the name part of `name@domain`), in characters.
    pub const MAX_LEN: usize = 64;
    /// The longest `name@domain`, in octets (one file name).
    pub const MAX_OCTETS: usize = 255;

    pub fn new(name: &str) -> Result<Self, UserNameError> {
        let lower = name.to_lowercase();
        let local = match lower.rsplit_once('@') {
            Some((local, domain)) if !domain.is_empty() && !domain.starts_with(['.', '-']) => local,
            _ => lower.as_str(),
        };
        let ok = !local.is_empty()
            && local.chars().count() <= Self::MAX_LEN
            && lower.len() <= Self::MAX_OCTETS
            && !lower.starts_with(['.', '-'])
            && lower.chars().all(|c| c.is_alphanumeric() || "._+@-".contains(c));
        if ok { Ok(Self(lower)) } else { Err(UserNameError(name.chars().take(80).collect())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserName({})", self.0)
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod user_name_tests {
    use super::*;

    #[test]
    fn user_names() {
        assert_eq!(UserName::new("Alice").map(|u| u.0), Ok("alice".into()));
        assert!(UserName::new("alice@example.org").is_ok());
        assert!(UserName::new("a.b+c_d-e").is_ok());
        assert_eq!(UserName::new("Jürgen").map(|u| u.0), Ok("jürgen".into()));
        assert!(UserName::new("用户").is_ok());
        for bad in ["", ".", "..", ".hidden", "-x", "a/b", "a:b", "a b", "a\0", &"x".repeat(65), "a\u{202e}b"] {
            assert!(UserName::new(bad).is_err(), "{bad:?}");
        }
        // A user of a virtual domain: 64 characters of name, and a domain after it.
        let long_domain = format!("{}@{}.example.org", "x".repeat(64), "d".repeat(60));
        assert!(UserName::new(&long_domain).is_ok(), "{long_domain}");
        assert!(UserName::new(&format!("{}@example.org", "x".repeat(65))).is_err());
        assert!(UserName::new(&format!("x@{}.org", "d".repeat(260))).is_err(), "one file name at most");
    }
}
