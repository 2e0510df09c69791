//! A small in-memory store of bytes by key, for content that could not be
//! written to the disk cache (the disk is full or unwritable): reads keep
//! working from memory. Bounded by a byte cap, least recently used first out.

use std::sync::{Arc, Mutex};

use lru::LruCache;

pub struct Memory {
    cap: u64,
    inner: Mutex<(LruCache<String, Arc<[u8]>>, u64)>,
}

impl Memory {
    pub fn new(cap: u64) -> Memory {
        Memory {
            cap,
            inner: Mutex::new((LruCache::unbounded(), 0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (LruCache<String, Arc<[u8]>>, u64)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `data` (if it fits under the cap at all).
    pub fn put(&self, key: &str, data: Arc<[u8]>) {
        let len = data.len() as u64;
        if len > self.cap {
            return;
        }
        let mut g = self.lock();
        if let Some(old) = g.0.put(key.to_owned(), data) {
            g.1 -= old.len() as u64;
        }
        g.1 += len;
        while g.1 > self.cap {
            match g.0.pop_lru() {
                Some((_, v)) => g.1 -= v.len() as u64,
                None => break,
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        self.lock().0.get(key).cloned()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lock().0.contains(key)
    }
}

#[cfg(test)]
#[test]
fn bounded_and_lru() {
    let m = Memory::new(10);
    m.put("a", Arc::from(&b"12345"[..]));
    m.put("b", Arc::from(&b"12345"[..]));
    assert!(m.get("a").is_some()); // a is now the most recent
    m.put("c", Arc::from(&b"123"[..]));
    assert!(!m.contains("b") && m.contains("a") && m.contains("c"));
    m.put("huge", Arc::from(&[0u8; 11][..]));
    assert!(!m.contains("huge"));
}
