//! One conformance suite for every [`Mailstore`] backend: what the service layer relies on. A
//! backend's tests call [`run`] with a fresh, empty store and a way to make a lease lapse the
//! way that backend can lose one (a database lease that times out, a lock file someone removes).

use tokio::io::AsyncReadExt;

use crate::{Mailstore, StoreError, Update, Usage};
use pillarbox_proto::UserName;

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap_or_else(|e| panic!("test name {name}: {e}"))
}

/// Store one message (what the service layer's delivery does, without its rules).
pub async fn deliver(store: &dyn Mailstore, u: &UserName, message: &[u8]) -> crate::Delivered {
    let mut p = store.begin_delivery(u).await.expect("begin delivery");
    p.write(message).await.expect("write");
    p.commit().await.expect("commit")
}

async fn read_all(store: &dyn Mailstore, u: &UserName, index: usize) -> Vec<u8> {
    let mut opened = store.open(u, false).await.expect("open");
    let mut body = opened.maildrop.open_message(index).await.expect("message");
    let mut v = Vec::new();
    body.read_to_end(&mut v).await.expect("read");
    v
}

/// A backend keeps a message as delivered, or in its CRLF form (every line end a CRLF, and a
/// final one after a last line without one): what RETR sends, before dot-stuffing.
fn assert_same_content(got: &[u8], delivered: &[u8]) {
    let mut crlf = Vec::new();
    for (i, &b) in delivered.iter().enumerate() {
        if b == b'\n' && (i == 0 || delivered[i - 1] != b'\r') {
            crlf.push(b'\r');
        }
        crlf.push(b);
    }
    if !crlf.is_empty() && !crlf.ends_with(b"\n") {
        crlf.extend_from_slice(b"\r\n");
    }
    assert!(
        got == delivered || got == crlf,
        "content changed: {:?} for {:?}",
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(delivered)
    );
}

async fn uids(store: &dyn Mailstore, u: &UserName) -> Vec<pillarbox_proto::UniqueId> {
    store.open(u, false).await.expect("open").listing.entries.into_iter().map(|e| e.uid).collect()
}

/// Run the whole suite. `lose_lease(store, user)` must make the current exclusive lease of
/// `user` lapse without its holder knowing. Panics (as a test does) on the first difference.
pub async fn run(store: &dyn Mailstore, lose_lease: &(dyn Fn(&UserName) + Sync)) {
    let alice = user("alice");
    let bob = user("bob");

    // A new maildrop is empty.
    let opened = store.open(&alice, true).await.expect("open empty");
    assert!(opened.listing.entries.is_empty());
    drop(opened);

    // Delivery records the CRLF size; content comes back unchanged.
    let d1 = deliver(store, &alice, b"Subject: one\n\nbody\n").await;
    assert_eq!(d1.size, 22);
    assert!([19, 22].contains(&d1.raw_size), "as delivered or in CRLF form: {}", d1.raw_size);
    deliver(store, &alice, b"Subject: two\r\n\r\nbody\r\n").await;
    deliver(store, &bob, b"for bob").await;
    let opened = store.open(&alice, false).await.expect("open");
    let sizes: Vec<u64> = opened.listing.entries.iter().map(|e| e.size).collect();
    assert_eq!(sizes, vec![22, 22], "delivery order, CRLF sizes");
    assert_eq!(opened.maildrop.lease(), None, "a shared open holds no lease");
    drop(opened);
    assert_same_content(&read_all(store, &alice, 0).await, b"Subject: one\n\nbody\n");
    // A message without a final line end: RETR supplies a CRLF, and LIST, STAT and the usage
    // count it.
    let opened = store.open(&bob, false).await.expect("open");
    assert_eq!(opened.listing.entries[0].size, 9, "`for bob` and the CRLF RETR adds");
    drop(opened);
    assert_eq!(store.usage(&bob).await.expect("usage").bytes, 9);

    // Unique ids are valid, distinct and stable across opens.
    let first = uids(store, &alice).await;
    assert_ne!(first[0], first[1]);
    assert_eq!(first, uids(store, &alice).await);

    // Exclusive access: a second exclusive open is refused until the first is dropped; every
    // grant has a newer fencing token.
    let held = store.open(&alice, true).await.expect("first lease");
    let t1 = held.maildrop.lease().expect("an exclusive open holds a lease");
    assert!(matches!(store.open(&alice, true).await, Err(StoreError::InUse)));
    assert!(store.open(&bob, true).await.is_ok(), "another user is not affected");
    assert!(store.open(&alice, false).await.is_ok(), "shared opens are allowed");
    drop(held);
    let mut held = store.open(&alice, true).await.expect("lease released on drop");
    let t2 = held.maildrop.lease().expect("lease");
    assert!(t2 > t1, "fencing tokens grow: {t1:?} then {t2:?}");

    // A listing is a snapshot: mail delivered meanwhile shows up only at the next open.
    deliver(store, &alice, b"Subject: three\n\nx\n").await;
    assert_eq!(held.listing.entries.len(), 2);

    // Deleting removes exactly the chosen messages; deleting twice is not an error.
    held.maildrop.commit(&Update { deleted: &[0], ..Update::default() }).await.expect("delete");
    held.maildrop.commit(&Update { deleted: &[0], ..Update::default() }).await.expect("delete again is harmless");
    assert!(matches!(held.maildrop.open_message(0).await, Err(StoreError::Gone)));
    drop(held);
    let after = store.open(&alice, false).await.expect("open");
    assert_eq!(after.listing.entries.len(), 2);
    assert_eq!(after.listing.entries[0].uid, first[1], "the survivor keeps its id");
    assert!(!after.listing.entries.iter().any(|e| e.uid == first[0]), "a deleted id is not reused");

    // Usage counts CRLF octets of what is there now.
    let u = store.usage(&alice).await.expect("usage");
    assert_eq!(u, Usage { messages: 2, bytes: after.listing.entries.iter().map(|e| e.size).sum() });
    drop(after);

    // A lost lease: the maildrop can be leased again, and the old holder's commit is refused
    // and changes nothing, so two sessions never both apply deletions.
    let mut stale = store.open(&alice, true).await.expect("lease");
    lose_lease(&alice);
    let mut fresh = store.open(&alice, true).await.expect("leased again after the lease was lost");
    assert!(fresh.maildrop.lease() > stale.maildrop.lease(), "the new holder has the newer token");
    let refused = stale.maildrop.commit(&Update { deleted: &[0, 1], retrieved: &[], now: 5 }).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    assert!(!StoreError::LeaseLost.is_permanent(), "a lost lease is worth retrying");
    assert_eq!(store.usage(&alice).await.expect("usage").messages, 2, "the stale commit removed nothing");
    drop(stale);
    assert!(
        matches!(store.open(&alice, true).await, Err(StoreError::InUse)),
        "dropping the stale holder frees nothing"
    );
    fresh.maildrop.commit(&Update { deleted: &[], retrieved: &[0], now: 7 }).await.expect("the holder commits");
    drop(fresh);

    // Retrieval times: recorded once (the first time wins), forgotten with the message, and
    // used by the expunger, which leaves a maildrop in use alone.
    deliver(store, &bob, b"Subject: four\n\nx\n").await;
    let mut s = store.open(&bob, true).await.expect("open");
    assert_eq!(s.maildrop.retrieved_at(0).await, None);
    s.maildrop.commit(&Update { deleted: &[], retrieved: &[0], now: 1000 }).await.expect("commit");
    drop(s);
    let mut s = store.open(&bob, true).await.expect("open");
    assert_eq!(s.maildrop.retrieved_at(0).await, Some(1000));
    s.maildrop.commit(&Update { deleted: &[], retrieved: &[0, 1], now: 2000 }).await.expect("commit");
    assert_eq!(s.maildrop.retrieved_at(0).await, Some(1000), "first retrieval wins");
    assert_eq!(store.expunge_retrieved(&bob, 1500).await.expect("expunge"), None, "in use: skipped");
    drop(s);
    assert_eq!(store.expunge_retrieved(&bob, 1500).await.expect("expunge"), Some(1));
    let mut s = store.open(&bob, false).await.expect("open");
    assert_eq!(s.listing.entries.len(), 1);
    assert_eq!(s.maildrop.retrieved_at(0).await, Some(2000));
    drop(s);

    // A pending delivery that is dropped leaves nothing; a committed one is complete.
    let mut p = store.begin_delivery(&bob).await.expect("begin");
    p.write(b"half a mess").await.expect("write");
    drop(p);
    let before = store.usage(&bob).await.expect("usage").messages;
    let mut p = store.begin_delivery(&bob).await.expect("begin");
    p.write(b"Subject: in\n").await.expect("write");
    p.write(b"\nchunks\n").await.expect("write");
    assert_eq!(p.size(), 23);
    let d = p.commit().await.expect("commit");
    assert_eq!(d.size, 23);
    assert!([20, 23].contains(&d.raw_size), "as delivered or in CRLF form: {}", d.raw_size);
    assert_eq!(store.usage(&bob).await.expect("usage").messages, before + 1);
    let last = store.open(&bob, false).await.expect("open").listing.entries.len() - 1;
    assert_same_content(&read_all(store, &bob, last).await, b"Subject: in\n\nchunks\n");
}
