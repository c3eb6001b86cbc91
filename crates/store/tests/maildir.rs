//! Maildir specifics: files written by other programs, renames behind the server's back, and an
//! index that is never trusted blindly.

use std::fs;
use std::path::Path;

use pillarbox_proto::UserName;
use pillarbox_store::conformance::deliver;
use pillarbox_store::maildir::MaildirStore;
use pillarbox_store::{Mailstore, StoreError, Update};
use tokio::io::AsyncReadExt;

fn alice() -> UserName {
    UserName::new("alice").expect("valid")
}

fn setup() -> (tempfile::TempDir, MaildirStore, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MaildirStore::new(dir.path());
    let md = store.maildir(&alice());
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(md.join(sub)).expect("mkdir");
    }
    (dir, store, md)
}

async fn listing(store: &MaildirStore) -> Vec<(u64, String)> {
    store
        .open(&alice(), false)
        .await
        .expect("open")
        .listing
        .entries
        .into_iter()
        .map(|e| (e.size, e.uid.to_string()))
        .collect()
}

fn write(path: &Path, data: &[u8]) {
    fs::write(path, data).expect("write");
}

#[tokio::test]
async fn foreign_files_with_and_without_size_hints() {
    let (_d, store, md) = setup();
    // Postfix-style name, no hints, bare LF: size computed from the content.
    write(&md.join("new/1700000001.V801I2M3.mx"), b"A: b\n\nline\n");
    // Dovecot-style name with S= and W= hints and flags: the hint is used as is.
    write(&md.join("cur/1700000000.M1P2Q3.host,S=11,W=14:2,S"), b"A: b\n\nline\n");
    // Dot files and the index itself are not messages.
    write(&md.join("cur/.hidden"), b"x");
    let l = listing(&store).await;
    assert_eq!(l, vec![(14, "1700000000.M1P2Q3.host,S=11,W=14".into()), (14, "1700000001.V801I2M3.mx".into())]);
}

#[tokio::test]
async fn uids_survive_index_loss_and_flag_renames() {
    let (_d, store, md) = setup();
    for i in 0..5 {
        deliver(&store, &alice(), format!("Subject: {i}\n\nbody {i}\n").as_bytes()).await;
    }
    let before = listing(&store).await;
    // Another program moves a message to cur/ and sets a flag.
    let name = fs::read_dir(md.join("new")).expect("new").next().expect("one").expect("entry").file_name();
    let name = name.to_str().expect("utf8").to_owned();
    fs::rename(md.join("new").join(&name), md.join("cur").join(format!("{name}:2,S"))).expect("rename");
    assert_eq!(listing(&store).await, before, "a rename does not change ids, sizes or order");
    assert!(!md.join("pillarbox-index").exists(), "names this store gives need no index");
    // A file without hints makes the index necessary; losing it changes nothing either.
    write(&md.join("new/1700000000.X9.mx"), b"no hints\n");
    let before = listing(&store).await;
    fs::remove_file(md.join("pillarbox-index")).expect("index exists now");
    assert_eq!(listing(&store).await, before, "a rebuilt index gives the same ids");
    write(&md.join("pillarbox-index"), b"pillarbox-index 2\nnonsense\n");
    assert_eq!(listing(&store).await, before, "a damaged index is rebuilt");
}

#[tokio::test]
async fn index_entry_is_not_trusted_when_the_file_changed() {
    let (_d, store, md) = setup();
    let f = md.join("new/1700000000.X1.host");
    write(&f, b"short\n");
    assert_eq!(listing(&store).await[0].0, 7);
    // Rewritten in place by another tool: different stored size, so the cached size is dropped.
    write(&f, b"a much longer message\nwith two lines\n");
    assert_eq!(listing(&store).await[0].0, 39);
}

#[tokio::test]
async fn message_renamed_during_a_session_is_still_served() {
    let (_d, store, md) = setup();
    deliver(&store, &alice(), b"Subject: x\n\nhello\n").await;
    let mut opened = store.open(&alice(), true).await.expect("open");
    let name = fs::read_dir(md.join("new")).expect("new").next().expect("one").expect("entry").file_name();
    let name = name.to_str().expect("utf8").to_owned();
    fs::rename(md.join("new").join(&name), md.join("cur").join(format!("{name}:2,S"))).expect("rename");
    let mut content = Vec::new();
    opened.maildrop.open_message(0).await.expect("relocated").read_to_end(&mut content).await.expect("read");
    assert_eq!(content, b"Subject: x\n\nhello\n");
    opened
        .maildrop
        .commit(&Update { deleted: &[0], ..Update::default() })
        .await
        .expect("delete follows the rename too");
    assert_eq!(fs::read_dir(md.join("cur")).expect("cur").count(), 0);
}

#[tokio::test]
async fn message_removed_behind_the_session_is_gone_not_an_error_to_delete() {
    let (_d, store, md) = setup();
    deliver(&store, &alice(), b"x\n").await;
    let mut opened = store.open(&alice(), true).await.expect("open");
    for e in fs::read_dir(md.join("new")).expect("new") {
        fs::remove_file(e.expect("entry").path()).expect("rm");
    }
    assert!(matches!(opened.maildrop.open_message(0).await, Err(StoreError::Gone)));
    opened
        .maildrop
        .commit(&Update { deleted: &[0], ..Update::default() })
        .await
        .expect("already gone counts as deleted");
}

#[tokio::test]
async fn delivered_file_names_carry_both_size_hints() {
    let (_d, store, md) = setup();
    let d = deliver(&store, &alice(), b"a\nb\n").await;
    assert!(d.name.ends_with(",S=4,W=6"), "{}", d.name);
    assert!(md.join("new").join(&d.name).is_file());
}

#[tokio::test]
async fn dovecot_uidlist_keeps_dovecot_uidls_and_order() {
    let (_d, store, md) = setup();
    // Delivered "later" by time but numbered first by Dovecot, one with a saved POP3 UIDL, and
    // one message Dovecot never saw.
    write(&md.join("cur/1700000009.M1P1.host,S=6,W=7:2,S"), b"first\n");
    write(&md.join("new/1700000001.M2P1.host,S=7,W=8"), b"second\n");
    write(&md.join("new/1700000005.M3P1.host,S=6,W=7"), b"third\n");
    write(&md.join("new/1700000002.M4P1.host,S=6,W=7"), b"extra\n");
    write(
        &md.join("dovecot-uidlist"),
        b"3 V1700000000 N4 G0123456789abcdef\n1 :1700000009.M1P1.host,S=6,W=7\n2 W8 :1700000001.M2P1.host,S=7,W=8\n3 Pkept-from-before :1700000005.M3P1.host,S=6,W=7\n",
    );
    let l = listing(&store).await;
    assert_eq!(
        l,
        vec![
            (7, "000000016553f100".into()),
            (8, "000000026553f100".into()),
            (7, "kept-from-before".into()),
            (7, "1700000002.M4P1.host,S=6,W=7".into()),
        ]
    );
}

/// Set both message folders' modification times to ten seconds before `base`.
fn age_folders(md: &Path, base: std::time::SystemTime) {
    let t = base - std::time::Duration::from_secs(10);
    for sub in ["new", "cur"] {
        fs::File::open(md.join(sub)).and_then(|f| f.set_modified(t)).expect("set mtime");
    }
}

#[tokio::test]
async fn a_large_maildrop_listing_is_reused_only_while_its_folders_are_unchanged() {
    let (_d, store, md) = setup();
    for i in 0..1200 {
        write(&md.join("cur").join(format!("{}.M{i}P1.host,S=4,W=5:2,S", 1_700_000_000 + i)), b"x\n\n\n");
    }
    let base = std::time::SystemTime::now();
    age_folders(&md, base);
    assert_eq!(listing(&store).await.len(), 1200);
    // Proof that the second open used the kept listing: a file removed behind the store's back,
    // with the folder's time put back as it was, is still listed (only possible by tampering).
    let victim = md.join("cur").join(format!("{}.M0P1.host,S=4,W=5:2,S", 1_700_000_000));
    fs::remove_file(&victim).expect("remove");
    age_folders(&md, base);
    assert_eq!(listing(&store).await.len(), 1200, "the kept listing was used");
    // Any real change moves the folder's time on: seen at once, even within the same second.
    write(&md.join("new").join("1800000000.M1P1.host,S=4,W=5"), b"y\n\n\n");
    assert_eq!(listing(&store).await.len(), 1200, "one removed, one added");
    deliver(&store, &alice(), b"Subject: new\n\nbody\n").await;
    assert_eq!(listing(&store).await.len(), 1201);
    // A listing taken while the folders had just changed is not kept: a change within the same
    // clock tick leaves the folder's time as it was and would otherwise go unnoticed.
    let recent = std::time::SystemTime::now();
    let touch = |t| {
        for sub in ["new", "cur"] {
            fs::File::open(md.join(sub)).and_then(|f| f.set_modified(t)).expect("set mtime");
        }
    };
    touch(recent);
    assert_eq!(listing(&store).await.len(), 1201);
    fs::remove_file(md.join("new").join("1800000000.M1P1.host,S=4,W=5")).expect("remove");
    touch(recent);
    assert_eq!(listing(&store).await.len(), 1200, "a listing of unsettled folders is not reused");
}

#[tokio::test]
async fn deletions_through_a_kept_listing_are_durable_and_seen() {
    let (_d, store, md) = setup();
    for i in 0..1000 {
        write(&md.join("cur").join(format!("{}.M{i}P1.host,S=4,W=5:2,S", 1_700_000_000 + i)), b"x\n\n\n");
    }
    age_folders(&md, std::time::SystemTime::now());
    assert_eq!(listing(&store).await.len(), 1000);
    let mut opened = store.open(&alice(), true).await.expect("open");
    assert_eq!(opened.listing.entries.len(), 1000);
    opened.maildrop.commit(&Update { deleted: &[0, 999], retrieved: &[], now: 0 }).await.expect("commit");
    drop(opened);
    assert_eq!(listing(&store).await.len(), 998);
}

#[tokio::test]
async fn what_a_file_name_says() {
    use pillarbox_store::maildir::NameInfo;
    let n = NameInfo::parse("1700000000.M123P45.host,S=1234,W=1260:2,RS");
    assert_eq!((n.stored_size, n.crlf_size, n.time), (Some(1234), Some(1260), (1_700_000_000, 123)));
    assert_eq!(n.uid.to_string(), "1700000000.M123P45.host,S=1234,W=1260");
    let odd = NameInfo::parse("no-time,S=x:2,");
    assert_eq!((odd.stored_size, odd.crlf_size, odd.time.0), (None, None, u64::MAX));
}

/// The octets a client ends up with after RETR: the message encoded for the wire, then read back
/// the way a client does (an oracle independent of how the store counts).
fn retr_octets(message: &[u8]) -> usize {
    use pillarbox_proto::{MessageEncoder, Unstuffer};
    let mut wire = bytes::BytesMut::new();
    let mut enc = MessageEncoder::retr();
    enc.encode(message, &mut wire);
    enc.finish(&mut wire);
    let mut text = bytes::BytesMut::new();
    assert_eq!(Unstuffer::new().decode(&wire, &mut text), pillarbox_proto::Unstuffed::Done(wire.len()));
    text.len()
}

#[tokio::test]
async fn sizes_count_the_crlf_retr_adds_after_a_message_without_a_final_line_end() {
    let (_d, store, md) = setup();
    // Files other programs wrote, with and without size hints (a hint counts the octets only).
    let files: [(&str, &[u8]); 5] = [
        ("1700000001.M1P1.host,S=3,W=3", b"abc"),
        ("1700000002.M1P1.host", b"abc"),
        ("1700000003.M1P1.host,S=2,W=2", b"x\r"),
        ("1700000004.M1P1.host,S=4,W=6", b"a\nb\n"),
        ("1700000005.M1P1.host,S=0,W=0", b""),
    ];
    for (name, body) in files {
        write(&md.join("cur").join(format!("{name}:2,")), body);
    }
    // An index of the previous version, whose sizes left the CRLF out: not trusted.
    write(
        &md.join("pillarbox-index"),
        b"pillarbox-index 1\n1700000001.M1P1.host,S=3,W=3\t3\t3\n1700000002.M1P1.host\t3\t3\nend 2\n",
    );
    let want: Vec<u64> = files.iter().map(|(_, b)| retr_octets(b) as u64).collect();
    assert_eq!(want, vec![5, 5, 4, 6, 0]);
    let sizes = |l: Vec<(u64, String)>| l.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(sizes(listing(&store).await), want, "first listing");
    let index = fs::read_to_string(md.join("pillarbox-index")).expect("index");
    assert!(index.starts_with("pillarbox-index 2\n") && index.contains("end 5"), "{index}");
    assert_eq!(sizes(listing(&store).await), want, "from the index");
    assert_eq!(store.usage(&alice()).await.expect("usage").bytes, want.iter().sum::<u64>());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn listed_sizes_are_the_octets_retr_gives_for_any_body(
        body in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b'.'),
                proptest::strategy::Just(b'\r'),
                proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b'a'),
                proptest::prelude::any::<u8>()
            ],
            0..300,
        ),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (_d, store, md) = setup();
        let want = retr_octets(&body) as u64;
        rt.block_on(async {
            let delivered = deliver(&store, &alice(), &body).await;
            assert_eq!(delivered.size, want, "what delivery reports");
            // The same body as files another program wrote, without hints and with them (whose
            // `W=` counts the octets alone, as Dovecot's does).
            write(&md.join("cur").join("1800000000.M1P1.other:2,"), &body);
            let mut c = pillarbox_proto::CrlfCounter::new();
            c.update(&body);
            let hinted = format!("1800000001.M1P1.other,S={},W={}:2,", body.len(), c.converted());
            write(&md.join("cur").join(hinted), &body);
            for pass in ["scan", "index"] {
                let opened = store.open(&alice(), false).await.expect("open");
                let sizes: Vec<u64> = opened.listing.entries.iter().map(|e| e.size).collect();
                assert_eq!(sizes, vec![want, want, want], "{pass}: {body:?}");
            }
        });
    }
}
