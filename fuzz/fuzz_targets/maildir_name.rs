#![no_main]
//! The Maildir file-name reader: any name gives hints and a valid UIDL (RFC 1939: 1 to 70
//! characters from 0x21 to 0x7E), never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let info = pillarbox_store::maildir::NameInfo::parse(&name);
    let uid = info.uid.to_string();
    assert!((1..=70).contains(&uid.len()) && uid.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{uid:?}");
});
