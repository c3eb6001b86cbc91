#![no_main]
//! The POP3 command decoder: any line parses to a command or an error, never a panic, and a
//! parsed command's keyword is one of RFC 1939's and its extensions'.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = pillarbox_fuzz::fold(data, pillarbox_fuzz::POP3);
    if let Ok(c) = pillarbox_proto::command::parse(&line) {
        assert!(!c.keyword().is_empty());
    }
});
