//! Unique-ids (RFC 1939 section 7, UIDL) derived from a message's permanent name.
//!
//! The id is a pure function of the name the message was delivered under, so it is the same in
//! every session, after restarts and after the index is deleted and rebuilt, and since names are
//! unique in a maildrop it is never given to another message. A name that is itself a valid
//! unique-id is used as it is (as Maildir names almost always are); any other name (too long,
//! unusual bytes, or starting with `~`) maps to `~` and the MD5 of the name in hex, a form no
//! verbatim name can take.

use md5::{Digest, Md5};
use pillarbox_proto::UniqueId;

pub fn uid_for_name(name: &str) -> UniqueId {
    if !name.starts_with('~')
        && let Ok(uid) = UniqueId::new(name)
    {
        return uid;
    }
    let hex: String = Md5::digest(name.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    UniqueId::new(format!("~{hex}")).expect("`~` and 32 hex digits form a valid unique-id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbatim_when_valid_hashed_otherwise() {
        assert_eq!(uid_for_name("1700000000.M1P2Q3.host,S=10,W=12").as_str(), "1700000000.M1P2Q3.host,S=10,W=12");
        let long = "x".repeat(71);
        let h = uid_for_name(&long);
        assert!(h.as_str().starts_with('~') && h.as_str().len() == 33);
        assert_eq!(h, uid_for_name(&long), "stable");
        assert_ne!(uid_for_name("~abc"), UniqueId::new("~abc").expect("valid"));
        assert!(uid_for_name("with space").as_str().starts_with('~'));
    }
}
