//! In-memory backend, for tests and as the reference behaviour of the [`Mailstore`] trait.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex, PoisonError};

use pillarbox_proto::{CrlfCounter, Listing, ListingEntry, UniqueId, UserName};

use crate::{Delivered, Maildrop, Mailstore, Opened, PendingDelivery, StoreError, Update, Usage};

/// A stored message: its unique id and content.
type Message = (UniqueId, Arc<Vec<u8>>);

#[derive(Default)]
struct Inner {
    /// Per user, in delivery order.
    boxes: HashMap<UserName, Vec<Message>>,
    /// First retrieval times by unique id.
    retrieved: HashMap<UniqueId, u64>,
    locked: HashSet<UserName>,
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
}

fn crlf_len(data: &[u8]) -> u64 {
    let mut c = CrlfCounter::new();
    c.update(data);
    c.size()
}

impl Mailstore for MemoryStore {
    fn open(&self, user: &UserName, exclusive: bool) -> Result<Opened, StoreError> {
        let mut inner = self.lock();
        if exclusive && !inner.locked.insert(user.clone()) {
            return Err(StoreError::InUse);
        }
        let messages = inner.boxes.get(user).cloned().unwrap_or_default();
        let entries = messages.iter().map(|(uid, m)| ListingEntry { size: crlf_len(m), uid: uid.clone() }).collect();
        Ok(Opened {
            listing: Listing { entries },
            maildrop: Box::new(MemoryDrop { store: self.clone(), user: user.clone(), exclusive, messages }),
        })
    }

    fn begin_delivery(&self, user: &UserName) -> Result<Box<dyn PendingDelivery>, StoreError> {
        Ok(Box::new(MemoryPending { store: self.clone(), user: user.clone(), data: Vec::new() }))
    }

    fn usage(&self, user: &UserName) -> Result<Usage, StoreError> {
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

impl PendingDelivery for MemoryPending {
    fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn size(&self) -> u64 {
        crlf_len(&self.data)
    }

    fn commit(self: Box<Self>) -> Result<Delivered, StoreError> {
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
    exclusive: bool,
    messages: Vec<Message>,
}

/// A reader over shared message bytes.
struct SharedBytes(Cursor<Arc<Vec<u8>>>);

impl Read for SharedBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pos = self.0.position() as usize;
        let data = self.0.get_ref();
        let n = buf.len().min(data.len().saturating_sub(pos));
        buf[..n].copy_from_slice(&data[pos..pos + n]);
        self.0.set_position((pos + n) as u64);
        Ok(n)
    }
}

impl Maildrop for MemoryDrop {
    fn open_message(&mut self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        let (uid, data) = self.messages.get(index).ok_or(StoreError::Gone)?;
        let still_there = self.store.lock().boxes.get(&self.user).is_some_and(|b| b.iter().any(|(u, _)| u == uid));
        if !still_there {
            return Err(StoreError::Gone);
        }
        Ok(Box::new(SharedBytes(Cursor::new(Arc::clone(data)))))
    }

    fn retrieved_at(&mut self, index: usize) -> Option<u64> {
        let (uid, _) = self.messages.get(index)?;
        self.store.lock().retrieved.get(uid).copied()
    }

    fn commit(&mut self, update: &Update<'_>) -> Result<(), StoreError> {
        let uid_of = |i: &usize| self.messages.get(*i).map(|(u, _)| u.clone());
        let doomed: HashSet<UniqueId> = update.deleted.iter().filter_map(uid_of).collect();
        let mut inner = self.store.lock();
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
        if self.exclusive {
            self.store.lock().locked.remove(&self.user);
        }
    }
}
