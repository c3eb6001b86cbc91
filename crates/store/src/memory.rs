//! In-memory backend, for tests and as the reference behaviour of the [`Mailstore`] trait. Its
//! leases can be made to lapse ([`MemoryStore::expire_lease`]), as a database's can.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use pillarbox_proto::{CrlfCounter, Listing, ListingEntry, UniqueId, UserName};

use crate::{Delivered, Lease, Maildrop, Mailstore, MessageBody, Opened, PendingDelivery, StoreError, Update, Usage};

/// A stored message: its unique id and content.
type Message = (UniqueId, Arc<Vec<u8>>);

#[derive(Default)]
struct Inner {
    /// Per user, in delivery order.
    boxes: HashMap<UserName, Vec<Message>>,
    /// First retrieval times by unique id.
    retrieved: HashMap<UniqueId, u64>,
    /// The current lease per user, by token.
    leases: HashMap<UserName, u64>,
    /// The newest token granted per user.
    tokens: HashMap<UserName, u64>,
    next_id: u64,
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Let the current lease of `user` lapse, as a database lease that was not renewed in time
    /// does: the maildrop can be opened exclusively again, and the old holder's commit fails.
    pub fn expire_lease(&self, user: &UserName) {
        self.lock().leases.remove(user);
    }
}

fn crlf_len(data: &[u8]) -> u64 {
    let mut c = CrlfCounter::new();
    c.update(data);
    c.size()
}

#[async_trait]
impl Mailstore for MemoryStore {
    fn location(&self, user: &UserName) -> String {
        format!("the memory of this process ({user})")
    }

    async fn open(&self, user: &UserName, exclusive: bool) -> Result<Opened, StoreError> {
        let mut inner = self.lock();
        let lease = if exclusive {
            if inner.leases.contains_key(user) {
                return Err(StoreError::InUse);
            }
            let token = inner.tokens.get(user).copied().unwrap_or(0) + 1;
            inner.tokens.insert(user.clone(), token);
            inner.leases.insert(user.clone(), token);
            Some(Lease { token })
        } else {
            None
        };
        let messages = inner.boxes.get(user).cloned().unwrap_or_default();
        let entries = messages.iter().map(|(uid, m)| ListingEntry { size: crlf_len(m), uid: uid.clone() }).collect();
        Ok(Opened {
            listing: Listing { entries },
            maildrop: Box::new(MemoryDrop { store: self.clone(), user: user.clone(), lease, messages }),
        })
    }

    async fn begin_delivery(&self, user: &UserName) -> Result<Box<dyn PendingDelivery>, StoreError> {
        Ok(Box::new(MemoryPending { store: self.clone(), user: user.clone(), data: Vec::new() }))
    }

    async fn usage(&self, user: &UserName) -> Result<Usage, StoreError> {
        let inner = self.lock();
        let msgs = inner.boxes.get(user).map(Vec::as_slice).unwrap_or_default();
        Ok(Usage { messages: msgs.len() as u64, bytes: msgs.iter().map(|(_, m)| crlf_len(m)).sum() })
    }
}

struct MemoryPending {
    store: MemoryStore,
    user: UserName,
    data: Vec<u8>,
}

#[async_trait]
impl PendingDelivery for MemoryPending {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn size(&self) -> u64 {
        crlf_len(&self.data)
    }

    async fn commit(self: Box<Self>) -> Result<Delivered, StoreError> {
        let mut inner = self.store.lock();
        inner.next_id += 1;
        let name = format!("mem{}", inner.next_id);
        let uid =
            UniqueId::new(name.clone()).map_err(|e| StoreError::io("naming the message", std::io::Error::other(e)))?;
        let (raw_size, size) = (self.data.len() as u64, crlf_len(&self.data));
        inner.boxes.entry(self.user.clone()).or_default().push((uid, Arc::new(self.data)));
        Ok(Delivered { name, raw_size, size })
    }
}

struct MemoryDrop {
    store: MemoryStore,
    user: UserName,
    lease: Option<Lease>,
    messages: Vec<Message>,
}

/// Shared message bytes, readable without a copy of the message.
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[async_trait]
impl Maildrop for MemoryDrop {
    fn lease(&self) -> Option<Lease> {
        self.lease
    }

    async fn open_message(&mut self, index: usize) -> Result<MessageBody, StoreError> {
        let (uid, data) = self.messages.get(index).ok_or(StoreError::Gone)?;
        let still_there = self.store.lock().boxes.get(&self.user).is_some_and(|b| b.iter().any(|(u, _)| u == uid));
        if !still_there {
            return Err(StoreError::Gone);
        }
        Ok(Box::pin(Cursor::new(SharedBytes(Arc::clone(data)))))
    }

    async fn retrieved_at(&mut self, index: usize) -> Option<u64> {
        let (uid, _) = self.messages.get(index)?;
        self.store.lock().retrieved.get(uid).copied()
    }

    async fn commit(&mut self, update: &Update<'_>) -> Result<(), StoreError> {
        let uid_of = |i: &usize| self.messages.get(*i).map(|(u, _)| u.clone());
        let doomed: HashSet<UniqueId> = update.deleted.iter().filter_map(uid_of).collect();
        let mut inner = self.store.lock();
        if let Some(lease) = self.lease
            && inner.leases.get(&self.user) != Some(&lease.token)
        {
            return Err(StoreError::LeaseLost);
        }
        if let Some(b) = inner.boxes.get_mut(&self.user) {
            b.retain(|(u, _)| !doomed.contains(u));
        }
        inner.retrieved.retain(|u, _| !doomed.contains(u));
        for uid in update.retrieved.iter().filter_map(uid_of).filter(|u| !doomed.contains(u)) {
            inner.retrieved.entry(uid).or_insert(update.now);
        }
        Ok(())
    }
}

impl Drop for MemoryDrop {
    fn drop(&mut self) {
        if let Some(lease) = self.lease {
            let mut inner = self.store.lock();
            // Only its own lease: a lapsed one may have been granted to someone else since.
            if inner.leases.get(&self.user) == Some(&lease.token) {
                inner.leases.remove(&self.user);
            }
        }
    }
}
