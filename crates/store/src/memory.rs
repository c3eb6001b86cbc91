//! In-memory backend, for tests and as the reference behaviour of the [`Mailstore`] trait.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex, PoisonError};

use pillarbox_proto::{CrlfCounter, Listing, ListingEntry, UniqueId, UserName};

use crate::{Delivered, Maildrop, Mailstore, Opened, StoreError};

/// A stored message: its unique id and content.
type Message = (UniqueId, Arc<Vec<u8>>);

#[derive(Default)]
struct Inner {
    /// Per user: (unique id, content), in delivery order.
    boxes: HashMap<UserName, Vec<Message>>,
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

impl Mailstore for MemoryStore {
    fn open(&self, user: &UserName, exclusive: bool) -> Result<Opened, StoreError> {
        let mut inner = self.lock();
        if exclusive && !inner.locked.insert(user.clone()) {
            return Err(StoreError::InUse);
        }
        let messages = inner.boxes.get(user).cloned().unwrap_or_default();
        let entries = messages
            .iter()
            .map(|(uid, m)| {
                let mut c = CrlfCounter::new();
                c.update(m);
                ListingEntry { size: c.size(), uid: uid.clone() }
            })
            .collect();
        Ok(Opened {
            listing: Listing { entries },
            maildrop: Box::new(MemoryDrop { store: self.clone(), user: user.clone(), exclusive, messages }),
        })
    }

    fn deliver(&self, user: &UserName, message: &mut dyn Read, max_size: Option<u64>) -> Result<Delivered, StoreError> {
        let mut data = Vec::new();
        message.read_to_end(&mut data).map_err(|e| StoreError::io("reading the message", e))?;
        if let Some(limit) = max_size.filter(|&l| data.len() as u64 > l) {
            return Err(StoreError::TooLarge { limit });
        }
        let mut c = CrlfCounter::new();
        c.update(&data);
        let mut inner = self.lock();
        inner.next_id += 1;
        let name = format!("mem{}", inner.next_id);
        let uid =
            UniqueId::new(name.clone()).map_err(|e| StoreError::io("naming the message", std::io::Error::other(e)))?;
        let raw_size = data.len() as u64;
        inner.boxes.entry(user.clone()).or_default().push((uid, Arc::new(data)));
        Ok(Delivered { name, raw_size, size: c.size() })
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

    fn delete(&mut self, indexes: &[usize]) -> Result<(), StoreError> {
        let doomed: HashSet<&UniqueId> = indexes.iter().filter_map(|&i| self.messages.get(i).map(|(u, _)| u)).collect();
        let mut inner = self.store.lock();
        if let Some(b) = inner.boxes.get_mut(&self.user) {
            b.retain(|(u, _)| !doomed.contains(u));
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
