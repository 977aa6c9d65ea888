//! Uploaded query images, kept for a while under a short random id, so that a search by
//! an uploaded image can be named in a URL (the UI's shareable links, Back and Forward)
//! and run again without sending the image again.
//!
//! Bounded: at most `max_bytes` of images in all (the oldest go first) and each for
//! `ttl`. Kept in memory only; a restart forgets them, and a search by a forgotten id is
//! a clear 404 asking for the image again.

use crate::{AppError, Result};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Uploads {
    inner: Mutex<Inner>,
    max_bytes: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Inner {
    /// Oldest first.
    entries: VecDeque<(String, Instant, Arc<Vec<u8>>)>,
    bytes: usize,
}

impl Default for Uploads {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_BYTES, Self::DEFAULT_TTL)
    }
}

impl Uploads {
    pub const DEFAULT_MAX_BYTES: usize = 128 << 20;
    pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

    pub fn new(max_bytes: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keeps `bytes` and returns its id (`u` and 32 hex digits).
    pub fn put(&self, bytes: Vec<u8>) -> Result<String> {
        if bytes.is_empty() {
            return Err(AppError::bad_request("the uploaded image is empty"));
        }
        if bytes.len() > self.max_bytes {
            return Err(AppError::bad_request(format!(
                "the uploaded image has {} bytes; at most {} are kept",
                bytes.len(),
                self.max_bytes
            )));
        }
        let id = format!("u{:032x}", rand::random::<u128>());
        let now = Instant::now();
        let mut g = self.inner.lock();
        g.expire(now, self.ttl);
        while g.bytes + bytes.len() > self.max_bytes {
            let Some((_, _, b)) = g.entries.pop_front() else {
                break;
            };
            g.bytes -= b.len();
        }
        g.bytes += bytes.len();
        g.entries.push_back((id.clone(), now, Arc::new(bytes)));
        Ok(id)
    }

    /// The image kept under `id`: a bad request for a malformed id, not found when it
    /// expired, was pushed out, or never existed.
    pub fn get(&self, id: &str) -> Result<Arc<Vec<u8>>> {
        let well_formed =
            id.len() == 33 && id.starts_with('u') && id[1..].bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Err(AppError::bad_request(format!(
                "'upload' must be an id returned by /v2/images/uploads, got '{}'",
                crate::text::clip(id, 40)
            )));
        }
        let mut g = self.inner.lock();
        g.expire(Instant::now(), self.ttl);
        g.entries
            .iter()
            .find(|e| e.0 == id)
            .map(|e| e.2.clone())
            .ok_or_else(|| {
                AppError::NotFound(format!(
                    "the uploaded image {id} is no longer kept (uploads are kept for {} minutes); upload it again",
                    self.ttl.as_secs() / 60
                ))
            })
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((_, at, b)) = self.entries.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            self.bytes -= b.len();
            self.entries.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_until_pushed_out_or_expired() {
        let u = Uploads::new(10, Duration::from_secs(3600));
        let a = u.put(vec![1; 4]).unwrap();
        let b = u.put(vec![2; 4]).unwrap();
        assert_ne!(a, b);
        assert_eq!(*u.get(&a).unwrap(), vec![1; 4]);
        // A third pushes out the oldest.
        let c = u.put(vec![3; 4]).unwrap();
        assert!(matches!(u.get(&a), Err(AppError::NotFound(_))));
        assert_eq!(*u.get(&b).unwrap(), vec![2; 4]);
        assert_eq!(*u.get(&c).unwrap(), vec![3; 4]);
        assert!(matches!(u.put(vec![0; 11]), Err(AppError::BadRequest(_))));
        assert!(matches!(u.put(Vec::new()), Err(AppError::BadRequest(_))));
        assert!(matches!(u.get("../etc"), Err(AppError::BadRequest(_))));
        assert!(matches!(
            u.get(&format!("u{}", "0".repeat(32))),
            Err(AppError::NotFound(_))
        ));

        let u = Uploads::new(10, Duration::ZERO);
        let a = u.put(vec![1; 4]).unwrap();
        assert!(matches!(u.get(&a), Err(AppError::NotFound(_))));
    }
}
