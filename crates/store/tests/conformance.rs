//! The store conformance suite ([`pillarbox_store::conformance`]) against every backend.

use pillarbox_store::conformance;
use pillarbox_store::maildir::MaildirStore;
use pillarbox_store::memory::MemoryStore;

#[tokio::test]
async fn memory_store_conforms() {
    let store = MemoryStore::new();
    let lapse = store.clone();
    conformance::run(&store, &move |u| lapse.expire_lease(u)).await;
}

#[tokio::test]
async fn maildir_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    // A Maildir lease is lost when its lock file is removed (another session then locks a new one).
    conformance::run(&MaildirStore::new(dir.path()), &move |u| {
        std::fs::remove_file(root.join(u.as_str()).join("pillarbox-pop3.lock")).expect("remove the lock file");
    })
    .await;
    // No partial file is left behind in tmp/ by the dropped delivery.
    assert_eq!(std::fs::read_dir(dir.path().join("bob/tmp")).expect("tmp").count(), 0);
}
