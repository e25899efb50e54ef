//! Bounded maps for caches that peers can fill (SNI names, certificates, signing keys).
//!
//! [`BoundedMap`] holds at most its capacity. It keeps two generations: entries are inserted
//! into the young one, an entry read from the old one moves back to the young one, and when the
//! young generation reaches half the capacity it becomes the old one and the previous old one is
//! dropped. So a full cache loses only the entries nobody used for a whole generation (an
//! approximation of least-recently-used that costs one hash lookup per operation), never all of
//! them: a stream of strangers cannot flush the entries that live devices keep using, as long as
//! those are read more often than half the capacity of strangers arrive. Keep entries of
//! strangers (negative answers) in a map of their own, so they evict each other and not the good
//! ones.
//!
//! [`LogGate`] bounds the other thing peers fill: the log. At most one line per second per
//! cause, with the count held back.
//!
//! **Architecture Invariant:** no IO, no clock, no locking: callers wrap a map or a gate in their
//! own `Mutex`, pass the time in, and count [`BoundedMap::evicted`] in their metrics.

mod gate;

pub use gate::LogGate;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// A map of at most `capacity` entries that drops its least recently used half when full.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    capacity: usize,
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    evicted: u64,
}

impl<K: Eq + Hash, V> BoundedMap<K, V> {
    /// A map holding at most `capacity` entries (at least 2).
    pub fn new(capacity: usize) -> Self {
        BoundedMap { capacity: capacity.max(2), young: HashMap::new(), old: HashMap::new(), evicted: 0 }
    }

    /// The most entries the map holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many entries it holds now.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.young.is_empty() && self.old.is_empty()
    }

    /// How many entries were dropped to stay within the capacity, since the map was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The value of `key`, marking it as recently used.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if self.young.contains_key(key) {
            return self.young.get(key);
        }
        let (key, value) = self.old.remove_entry(key)?;
        self.make_room();
        Some(self.young.entry(key).or_insert(value))
    }

    /// Whether `key` is held, without marking it as used.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.young.contains_key(key) || self.old.contains_key(key)
    }

    /// Inserts or replaces `key`'s value.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.young.get_mut(&key) {
            *slot = value;
            return;
        }
        self.old.remove(&key);
        self.make_room();
        self.young.insert(key, value);
    }

    /// Removes `key`, answering its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.young.remove(key).or_else(|| self.old.remove(key))
    }

    /// Every value, in no particular order (not marked as used).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.young.values().chain(self.old.values())
    }

    /// Keeps only the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.young.retain(|key, value| keep(key, value));
        self.old.retain(|key, value| keep(key, value));
    }

    /// Empties the map (an invalidation, not an eviction: not counted).
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    /// Before an insertion into the young generation: when it holds half the capacity, it
    /// becomes the old one and the old one's entries are dropped.
    fn make_room(&mut self) {
        if self.young.len() >= self.capacity / 2 {
            self.evicted += self.old.len() as u64;
            self.old = std::mem::take(&mut self.young);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity() {
        for capacity in [2, 3, 10, 1000] {
            let mut map = BoundedMap::new(capacity);
            for key in 0..capacity * 10 {
                map.insert(key, key);
                assert!(map.len() <= capacity, "capacity {capacity}: {} entries", map.len());
            }
            assert!(map.evicted() > 0);
        }
    }

    #[test]
    fn entries_in_use_survive_a_stream_of_strangers() {
        let mut map = BoundedMap::new(100);
        for device in 0..10u32 {
            map.insert(device, "device");
        }
        // A million strangers, while the ten devices keep being read now and then.
        for stranger in 1000..201_000u32 {
            map.insert(stranger, "stranger");
            if stranger % 20 == 0 {
                for device in 0..10u32 {
                    assert_eq!(map.get(&device), Some(&"device"), "device {device} flushed at {stranger}");
                }
            }
        }
        assert!(map.len() <= 100);
    }

    #[test]
    fn a_full_map_drops_the_least_recently_used_half_not_everything() {
        let mut map = BoundedMap::new(10);
        for key in 0..10 {
            map.insert(key, ());
        }
        assert!(map.len() >= 5, "{}", map.len());
    }

    #[test]
    fn insert_replaces_and_remove_and_retain_work_across_generations() {
        let mut map = BoundedMap::new(4);
        map.insert("a", 1);
        map.insert("b", 2);
        map.insert("c", 3); // "a" and "b" are now the old generation
        map.insert("a", 10);
        assert_eq!(map.get("a"), Some(&10));
        assert_eq!(map.remove("b"), Some(2));
        assert!(!map.contains_key("b"));
        map.retain(|_, value| *value > 5);
        assert_eq!(map.len(), 1);
        map.clear();
        assert!(map.is_empty());
    }
}
