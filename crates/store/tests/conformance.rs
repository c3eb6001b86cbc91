//! One conformance suite for every [`Mailstore`] backend: what the POP3 server relies on.

use std::io::Read;

use pillarbox_proto::UserName;
use pillarbox_store::maildir::MaildirStore;
use pillarbox_store::memory::MemoryStore;
use pillarbox_store::{Mailstore, StoreError, Update, Usage};

fn user(name: &str) -> UserName {
    UserName::new(name).expect("valid name")
}

fn read_all(store: &dyn Mailstore, u: &UserName, index: usize) -> Vec<u8> {
    let mut opened = store.open(u, false).expect("open");
    let mut r = opened.maildrop.open_message(index).expect("message");
    let mut v = Vec::new();
    r.read_to_end(&mut v).expect("read");
    v
}

fn suite(store: &dyn Mailstore) {
    let alice = user("alice");
    let bob = user("bob");

    // A new maildrop is empty.
    let opened = store.open(&alice, true).expect("open empty");
    assert!(opened.listing.entries.is_empty());
    drop(opened);

    // Delivery records the CRLF size; content comes back unchanged.
    let d1 = store.deliver(&alice, &mut &b"Subject: one\n\nbody\n"[..], None).expect("deliver");
    assert_eq!((d1.raw_size, d1.size), (19, 22));
    store.deliver(&alice, &mut &b"Subject: two\r\n\r\nbody\r\n"[..], None).expect("deliver");
    store.deliver(&bob, &mut &b"for bob"[..], None).expect("deliver");
    let opened = store.open(&alice, false).expect("open");
    let sizes: Vec<u64> = opened.listing.entries.iter().map(|e| e.size).collect();
    assert_eq!(sizes, vec![22, 22], "delivery order, CRLF sizes");
    drop(opened);
    assert_eq!(read_all(store, &alice, 0), b"Subject: one\n\nbody\n");

    // Unique ids are valid, distinct and stable across opens.
    let uids = |s: &dyn Mailstore| {
        s.open(&alice, false).expect("open").listing.entries.into_iter().map(|e| e.uid).collect::<Vec<_>>()
    };
    let first = uids(store);
    assert_ne!(first[0], first[1]);
    assert_eq!(first, uids(store));

    // Exclusive access: a second exclusive open is refused until the first is dropped.
    let held = store.open(&alice, true).expect("first lock");
    assert!(matches!(store.open(&alice, true), Err(StoreError::InUse)));
    assert!(store.open(&bob, true).is_ok(), "another user is not affected");
    assert!(store.open(&alice, false).is_ok(), "non-exclusive opens are allowed");
    drop(held);
    let mut held = store.open(&alice, true).expect("lock released on drop");

    // A listing is a snapshot: mail delivered meanwhile shows up only at the next open.
    store.deliver(&alice, &mut &b"Subject: three\n\nx\n"[..], None).expect("deliver");
    assert_eq!(held.listing.entries.len(), 2);

    // Deleting removes exactly the chosen messages; deleting twice is not an error.
    held.maildrop.commit(&Update { deleted: &[0], ..Update::default() }).expect("delete");
    held.maildrop.commit(&Update { deleted: &[0], ..Update::default() }).expect("delete again is harmless");
    assert!(matches!(held.maildrop.open_message(0), Err(StoreError::Gone)));
    drop(held);
    let after = store.open(&alice, false).expect("open");
    assert_eq!(after.listing.entries.len(), 2);
    assert_eq!(after.listing.entries[0].uid, first[1], "the survivor keeps its id");
    assert!(!after.listing.entries.iter().any(|e| e.uid == first[0]), "a deleted id is not reused");

    // Usage counts CRLF octets of what is there now.
    let u = store.usage(&alice).expect("usage");
    assert_eq!(u.messages, 2);
    assert_eq!(u, Usage { messages: 2, bytes: after.listing.entries.iter().map(|e| e.size).sum() });

    // Retrieval times: recorded once (the first time wins), forgotten with the message, and
    // used by the expunger, which leaves a maildrop in use alone.
    let mut s = store.open(&alice, true).expect("open");
    assert_eq!(s.maildrop.retrieved_at(0), None);
    s.maildrop.commit(&Update { deleted: &[], retrieved: &[0], now: 1000 }).expect("commit");
    drop(s);
    let mut s = store.open(&alice, true).expect("open");
    assert_eq!(s.maildrop.retrieved_at(0), Some(1000));
    s.maildrop.commit(&Update { deleted: &[], retrieved: &[0, 1], now: 2000 }).expect("commit");
    assert_eq!(s.maildrop.retrieved_at(0), Some(1000), "first retrieval wins");
    assert_eq!(store.expunge_retrieved(&alice, 1500).expect("expunge"), None, "in use: skipped");
    drop(s);
    assert_eq!(store.expunge_retrieved(&alice, 1500).expect("expunge"), Some(1));
    let mut s = store.open(&alice, false).expect("open");
    assert_eq!(s.listing.entries.len(), 1);
    assert_eq!(s.maildrop.retrieved_at(0), Some(2000));
    drop(s);

    // A pending delivery that is dropped leaves nothing; a committed one is complete.
    let mut p = store.begin_delivery(&bob).expect("begin");
    p.write(b"half a mess").expect("write");
    drop(p);
    let before = store.usage(&bob).expect("usage").messages;
    let mut p = store.begin_delivery(&bob).expect("begin");
    p.write(b"Subject: in\n").expect("write");
    p.write(b"\nchunks\n").expect("write");
    assert_eq!(p.size(), 23);
    let d = p.commit().expect("commit");
    assert_eq!((d.raw_size, d.size), (20, 23));
    assert_eq!(store.usage(&bob).expect("usage").messages, before + 1);

    // Size limit: nothing is stored.
    let before = store.open(&bob, false).expect("open").listing.entries.len();
    assert!(matches!(store.deliver(&bob, &mut &[b'x'; 100][..], Some(10)), Err(StoreError::TooLarge { limit: 10 })));
    assert_eq!(store.open(&bob, false).expect("open").listing.entries.len(), before);
}

#[test]
fn memory_store_conforms() {
    suite(&MemoryStore::new());
}

#[test]
fn maildir_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    suite(&MaildirStore::new(dir.path()));
    // No partial file is left behind in tmp/ by the refused delivery.
    assert_eq!(std::fs::read_dir(dir.path().join("bob/tmp")).expect("tmp").count(), 0);
}
