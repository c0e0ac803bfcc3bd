//! The per-shard batch cache: recent batches of every partition of the shard, under one
//! memory budget, so that consumers near the head are served from memory.
//!
//! Owner: one shard; never shared. Entries are the same `Bytes` the log appended (a
//! reference, not a copy). Eviction is oldest-first across the shard's partitions, but an
//! entry whose bytes are not yet written to its segment file is never evicted (the file
//! cannot serve it yet); the budget may then be exceeded until the next write wave.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

/// A shard-local partition handle.
pub type PartitionId = u32;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub used_bytes: usize,
    pub budget_bytes: usize,
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Most unevictable entries one eviction pass steps over (bounds its cost per wave).
const EVICTION_SKIPS_MAX: usize = 4096;

pub struct BatchCache {
    budget_bytes: usize,
    used_bytes: usize,
    /// Insertion order, for eviction; may hold entries already removed (skipped on pop).
    order: VecDeque<(PartitionId, i64)>,
    /// Per partition: base offset → (last offset, bytes).
    entries: HashMap<PartitionId, BTreeMap<i64, (i64, Bytes)>>,
    live_entries: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl BatchCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            used_bytes: 0,
            order: VecDeque::new(),
            entries: HashMap::new(),
            live_entries: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            used_bytes: self.used_bytes,
            budget_bytes: self.budget_bytes,
            entries: self.live_entries,
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
        }
    }

    /// Caches a batch just appended. Every batch enters, whatever the budget: until its bytes
    /// are written to the segment file the cache is the only place a read can find them.
    pub fn insert(&mut self, partition: PartitionId, base_offset: i64, last_offset: i64, bytes: Bytes) {
        self.used_bytes += bytes.len();
        self.live_entries += 1;
        self.order.push_back((partition, base_offset));
        let previous = self.entries.entry(partition).or_default().insert(base_offset, (last_offset, bytes));
        assert!(previous.is_none(), "batch cached twice");
    }

    /// Contiguous cached batches starting with the one that holds `offset`, stopping before
    /// `end_offset` and once `max_bytes` are gathered (the first batch is always returned
    /// whole, as Kafka does). `None` when the batch holding `offset` is not cached.
    pub fn read(
        &mut self,
        partition: PartitionId,
        offset: i64,
        end_offset: i64,
        max_bytes: usize,
    ) -> Option<Vec<Bytes>> {
        let found = self.entries.get(&partition).and_then(|map| {
            let (_, (last, _)) = map.range(..=offset).next_back()?;
            if *last < offset {
                return None;
            }
            let mut out = Vec::new();
            let mut total = 0usize;
            let mut expected_base = None;
            for (&base, (last, bytes)) in map.range(..=offset).next_back().into_iter().chain(map.range(offset + 1..)) {
                if base >= end_offset || expected_base.is_some_and(|e| e != base) {
                    break;
                }
                if !out.is_empty() && total + bytes.len() > max_bytes {
                    break;
                }
                total += bytes.len();
                out.push(bytes.clone());
                expected_base = Some(last + 1);
            }
            Some(out)
        });
        match found {
            Some(batches) if !batches.is_empty() => {
                self.hits += 1;
                Some(batches)
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Evicts oldest entries while over budget; `evictable(partition, base_offset)` says
    /// whether an entry's bytes can be read from its file.
    /// Entries that cannot be evicted are stepped over (at most `EVICTION_SKIPS_MAX` per
    /// call), so that one partition's unwritten batches do not pin everything cached after
    /// them; they keep their place at the front.
    pub fn evict(&mut self, mut evictable: impl FnMut(PartitionId, i64) -> bool) {
        let mut skipped = VecDeque::new();
        while self.used_bytes > self.budget_bytes && skipped.len() < EVICTION_SKIPS_MAX {
            let Some((partition, base)) = self.order.pop_front() else {
                break;
            };
            if !self.entries.get(&partition).is_some_and(|m| m.contains_key(&base)) {
                continue;
            }
            if !evictable(partition, base) {
                skipped.push_back((partition, base));
                continue;
            }
            self.remove(partition, base);
            self.evictions += 1;
        }
        while let Some(entry) = skipped.pop_back() {
            self.order.push_front(entry);
        }
    }

    /// Every cached batch of `partition` from the one holding `offset` on, in offset order.
    pub fn batches_from(&self, partition: PartitionId, offset: i64) -> Vec<Bytes> {
        let Some(map) = self.entries.get(&partition) else { return Vec::new() };
        let first = map.range(..=offset).next_back().filter(|(_, (last, _))| *last >= offset).map(|(&b, _)| b);
        map.range(first.unwrap_or(offset)..).map(|(_, (_, bytes))| bytes.clone()).collect()
    }

    fn remove(&mut self, partition: PartitionId, base_offset: i64) {
        if let Some(map) = self.entries.get_mut(&partition)
            && let Some((_, bytes)) = map.remove(&base_offset)
        {
            self.used_bytes -= bytes.len();
            self.live_entries -= 1;
        }
    }

    /// Drops the partition's batches that end before `offset` (log start moved forward).
    pub fn remove_below(&mut self, partition: PartitionId, offset: i64) {
        let doomed: Vec<i64> = self
            .entries
            .get(&partition)
            .map(|m| m.iter().filter(|(_, (last, _))| *last < offset).map(|(&b, _)| b).collect())
            .unwrap_or_default();
        for base in doomed {
            self.remove(partition, base);
        }
        self.compact_order();
    }

    pub fn remove_partition(&mut self, partition: PartitionId) {
        if let Some(map) = self.entries.remove(&partition) {
            self.live_entries -= map.len();
            self.used_bytes -= map.values().map(|(_, b)| b.len()).sum::<usize>();
        }
        self.compact_order();
    }

    /// Keeps the eviction queue proportional to the live entries.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.live_entries + 64 {
            let entries = &self.entries;
            self.order.retain(|(p, b)| entries.get(p).is_some_and(|m| m.contains_key(b)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn reads_contiguous_batches_within_bounds() {
        let mut cache = BatchCache::new(1 << 20);
        cache.insert(1, 0, 9, batch(100));
        cache.insert(1, 10, 19, batch(100));
        cache.insert(1, 20, 29, batch(100));
        cache.insert(1, 40, 49, batch(100)); // gap at 30..39
        assert_eq!(cache.read(1, 5, 100, 1000).map(|v| v.len()), Some(3));
        assert_eq!(cache.read(1, 10, 100, 150).map(|v| v.len()), Some(1));
        assert_eq!(cache.read(1, 0, 20, 1000).map(|v| v.len()), Some(2));
        assert_eq!(cache.read(1, 0, 100, 10).map(|v| v.len()), Some(1), "first batch always whole");
        assert!(cache.read(1, 35, 100, 1000).is_none());
        assert!(cache.read(2, 0, 100, 1000).is_none());
        assert_eq!(cache.stats().hits, 4);
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn eviction_is_oldest_first_and_spares_unwritten_entries() {
        let mut cache = BatchCache::new(250);
        cache.insert(1, 0, 0, batch(100));
        cache.insert(2, 0, 0, batch(100));
        cache.insert(1, 1, 1, batch(100));
        // partition 2's entry is not written yet: eviction steps over it
        cache.evict(|p, _| p != 2);
        assert_eq!(cache.stats().used_bytes, 200);
        assert!(cache.read(1, 0, 10, 1000).is_none());
        assert!(cache.read(2, 0, 10, 1000).is_some(), "the unwritten entry stays");
        cache.insert(1, 2, 2, batch(100));
        cache.evict(|p, _| p != 2);
        assert_eq!(cache.stats().used_bytes, 200, "later entries go past the pinned one");
        assert!(cache.read(2, 0, 10, 1000).is_some());
        // once written it is the oldest, and goes first
        cache.evict(|_, _| true);
        cache.insert(2, 1, 1, batch(100));
        cache.evict(|_, _| true);
        assert_eq!(cache.stats().used_bytes, 200);
        assert!(cache.read(2, 0, 10, 1000).is_none());
        assert!(cache.read(1, 2, 10, 1000).is_some());
    }

    #[test]
    fn removal_keeps_accounting_exact() {
        let mut cache = BatchCache::new(1 << 20);
        for i in 0..10 {
            cache.insert(1, i, i, batch(10));
            cache.insert(2, i, i, batch(10));
        }
        cache.remove_below(1, 5);
        assert_eq!(cache.stats().used_bytes, 150);
        cache.remove_partition(2);
        assert_eq!(cache.stats().used_bytes, 50);
        assert_eq!(cache.stats().entries, 5);
        assert!(cache.read(1, 4, 100, 100).is_none());
        assert_eq!(cache.read(1, 5, 100, 1000).map(|v| v.len()), Some(5));
    }
}
