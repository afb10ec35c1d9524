//! The cache keys of the builds whose images this worker's engine holds, newest
//! first: what it tells orchestrators in its ping so that the next build of a key
//! comes here, where the layers are. Bounded; kept in memory, and read back at
//! start from the images on the engine (each carries its key as a label).

use std::collections::VecDeque;
use std::sync::Mutex;

/// The most keys a worker names in its ping.
pub const MAX_CACHE_KEYS: usize = 64;

#[derive(Default)]
pub(crate) struct CacheKeys {
    newest_first: Mutex<VecDeque<String>>,
}

impl CacheKeys {
    /// A build of `key` succeeded here: it becomes the newest; the oldest past
    /// [`MAX_CACHE_KEYS`] is forgotten.
    pub fn built(&self, key: &str) {
        let mut keys = self.newest_first.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|k| k != key);
        keys.push_front(key.to_string());
        keys.truncate(MAX_CACHE_KEYS);
    }

    /// Keys found on the engine at start: older than any built since.
    pub fn found(&self, keys: Vec<String>) {
        let mut held = self.newest_first.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if held.len() < MAX_CACHE_KEYS && !held.contains(&key) {
                held.push_back(key);
            }
        }
    }

    pub fn newest_first(&self) -> Vec<String> {
        self.newest_first.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_build_comes_first_and_the_set_stays_bounded() {
        let keys = CacheKeys::default();
        for i in 0..100 {
            keys.built(&format!("{i:x}"));
        }
        keys.built("a");
        let named = keys.newest_first();
        assert_eq!(named.len(), MAX_CACHE_KEYS);
        assert_eq!(&named[..3], ["a", "63", "62"]);
        assert_eq!(named.iter().filter(|k| *k == "a").count(), 1);

        let restarted = CacheKeys::default();
        restarted.built("new");
        restarted.found(vec!["old".into(), "new".into()]);
        assert_eq!(restarted.newest_first(), ["new", "old"]);
    }
}
