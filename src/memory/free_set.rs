//! The caching allocator's free blocks of one pool, ordered by (size, block id): the order in
//! which `CUDACachingAllocator.cpp` looks for a best fit (`BlockComparatorSize`: size, then
//! address; the replay's block ids stand for addresses).
//!
//! The same answers as a `BTreeSet<(u64, usize)>`, faster for the replay's mix of queries,
//! inserts and removals: the sizes are split into 1,024 buckets by their top five bits
//! (leading one and four more: two-level segregated fit), each bucket keeps its few entries
//! sorted (largest first, so that taking the smallest moves nothing), and a bitmap finds the
//! next non-empty bucket. Buckets increase with size, so the first
//! entry at or after a key is in its bucket or is the smallest entry of a later one.

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Sizes below `SUB` get a bucket each; each power of two above it gets `SUB` buckets.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;
const WORDS: usize = BUCKETS.div_ceil(64);

pub struct FreeSet {
    /// Entries as `size << 64 | id` (the same order as the tuples, one comparison).
    buckets: Box<[Vec<u128>]>,
    /// Bit `b` is set when bucket `b` holds an entry.
    nonempty: [u64; WORDS],
}

impl Default for FreeSet {
    fn default() -> Self {
        FreeSet {
            buckets: vec![Vec::new(); BUCKETS].into_boxed_slice(),
            nonempty: [0; WORDS],
        }
    }
}

/// Bucket of a size; monotone: `a <= b` implies `bucket(a) <= bucket(b)`.
fn pack(key: (u64, usize)) -> u128 {
    ((key.0 as u128) << 64) | key.1 as u128
}

fn unpack(k: u128) -> (u64, usize) {
    ((k >> 64) as u64, k as u64 as usize)
}

fn bucket(size: u64) -> usize {
    if size < SUB as u64 {
        return size as usize;
    }
    let log = 63 - size.leading_zeros();
    let sub = (size >> (log - SUB_BITS)) as usize & (SUB - 1);
    SUB + (log - SUB_BITS) as usize * SUB + sub
}

impl FreeSet {
    /// Where the smallest entry `>= key` is: (bucket, index in it).
    fn locate(&self, key: (u64, usize)) -> Option<(usize, usize)> {
        let b = bucket(key.0);
        let k = pack(key);
        // entries `>= k` come first in the bucket's descending order; the last of them is it
        let i = self.buckets[b].partition_point(|e| *e >= k);
        if i > 0 {
            return Some((b, i - 1));
        }
        // the smallest entry of the next non-empty bucket: its last
        let next = b + 1;
        let mut w = next / 64;
        if w >= WORDS {
            return None;
        }
        let mut bits = self.nonempty[w] & (u64::MAX << (next % 64));
        loop {
            if bits != 0 {
                let nb = w * 64 + bits.trailing_zeros() as usize;
                return Some((nb, self.buckets[nb].len() - 1));
            }
            w += 1;
            if w >= WORDS {
                return None;
            }
            bits = self.nonempty[w];
        }
    }

    /// The smallest entry `>= key`.
    #[cfg(test)]
    pub fn first_from(&self, key: (u64, usize)) -> Option<(u64, usize)> {
        let (b, i) = self.locate(key)?;
        Some(unpack(self.buckets[b][i]))
    }

    /// Removes and returns the smallest entry `>= key` (`first_from`, then `remove`).
    pub fn take_first_from(&mut self, key: (u64, usize)) -> Option<(u64, usize)> {
        let (b, i) = self.locate(key)?;
        Some(unpack(self.take(b, i)))
    }

    /// Removes entry `i` of bucket `b`; the last entry (the smallest) without moving others.
    fn take(&mut self, b: usize, i: usize) -> u128 {
        let v = &mut self.buckets[b];
        let e = if i + 1 == v.len() {
            v.pop().unwrap_or_default()
        } else {
            v.remove(i)
        };
        if v.is_empty() {
            self.nonempty[b / 64] &= !(1 << (b % 64));
        }
        e
    }

    /// Adds `key`; false if it was there.
    pub fn insert(&mut self, key: (u64, usize)) -> bool {
        let b = bucket(key.0);
        let v = &mut self.buckets[b];
        let k = pack(key);
        match v.binary_search_by(|e| k.cmp(e)) {
            Ok(_) => false,
            Err(i) => {
                if i == v.len() {
                    v.push(k);
                } else {
                    v.insert(i, k);
                }
                self.nonempty[b / 64] |= 1 << (b % 64);
                true
            }
        }
    }

    /// Removes `key`; false if it was not there.
    pub fn remove(&mut self, key: &(u64, usize)) -> bool {
        let b = bucket(key.0);
        let k = pack(*key);
        match self.buckets[b].binary_search_by(|e| k.cmp(e)) {
            Ok(i) => {
                self.take(b, i);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn buckets_increase_with_size() {
        let mut last = 0;
        let mut sizes: Vec<u64> = (0..5000u64)
            .chain((1..64).flat_map(|k| {
                let p = 1u64 << k;
                [p - 1, p, p + 1, p + p / 3]
            }))
            .chain([u64::MAX])
            .collect();
        sizes.sort_unstable();
        for s in sizes {
            let b = bucket(s);
            assert!(b >= last && b < BUCKETS, "{s}: {b} after {last}");
            last = b;
        }
    }

    proptest! {
        /// Every answer is the `BTreeSet`'s.
        #[test]
        fn same_answers_as_a_btreeset(ops in prop::collection::vec(
            (0u8..3, prop_oneof![0u64..5000, 0u64..(1 << 30), any::<u64>()], 0usize..50),
            1..400,
        )) {
            let mut f = FreeSet::default();
            let mut b: BTreeSet<(u64, usize)> = BTreeSet::new();
            let mut keys: Vec<(u64, usize)> = Vec::new();
            for (op, size, id) in ops {
                match op {
                    0 => {
                        prop_assert_eq!(f.insert((size, id)), b.insert((size, id)));
                        keys.push((size, id));
                    }
                    1 => {
                        // remove a key inserted before (or a fresh one, absent)
                        let k = keys.get(id % (keys.len() + 1)).copied().unwrap_or((size, id));
                        prop_assert_eq!(f.remove(&k), b.remove(&k));
                    }
                    _ => {
                        prop_assert_eq!(f.first_from((size, 0)), b.range((size, 0)..).next().copied());
                        if id % 2 == 0 {
                            let t = b.range((size, 0)..).next().copied();
                            if let Some(k) = t {
                                b.remove(&k);
                            }
                            prop_assert_eq!(f.take_first_from((size, 0)), t);
                        }
                    }
                }
            }
        }
    }
}
