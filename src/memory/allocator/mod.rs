//! A simulation of PyTorch's CUDA caching allocator (`c10/cuda/CUDACachingAllocator.cpp`,
//! `DeviceCachingAllocator`, as of torch 2.5–2.11): the same size rounding, the small and large
//! pools, the segment sizes, best-fit search by (stream, size, address), block splitting and
//! coalescing, `max_split_size_mb`, the over-size rounding limit, free-and-retry when a capacity is
//! reached (`release_available_cached_blocks`, then `release_cached_blocks`), and, approximately,
//! `expandable_segments`.
//!
//! What it does not model: cross-stream frees with CUDA events (`record_stream`: a free is taken as
//! completed at once), CUDA-graph private pools, `garbage_collection_threshold`. Addresses are the
//! simulator's own; only their order matters (the tie-break of the best-fit search).
//!
//! Used by the traced tier (`model::trace`) and checked against the real allocator's event streams
//! in `tests/trace_allocator.rs` (see `replay`).

pub mod replay;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// All sizes are rounded to at least 512 bytes (`kMinBlockSize`, CUDACachingAllocator.cpp).
pub const MIN_BLOCK_SIZE: u64 = 512;
/// Largest "small" request: 1 MiB (`kSmallSize`).
pub const SMALL_SIZE: u64 = 1 << 20;
/// Small requests are packed in 2 MiB segments (`kSmallBuffer`).
pub const SMALL_BUFFER: u64 = 2 << 20;
/// Requests between 1 and 10 MiB may be packed in 20 MiB segments (`kLargeBuffer`).
pub const LARGE_BUFFER: u64 = 20 << 20;
/// Requests of 10 MiB and more get their own segment (`kMinLargeAlloc`).
pub const MIN_LARGE_ALLOC: u64 = 10 << 20;
/// Large segments are rounded up to 2 MiB (`kRoundLarge`).
pub const ROUND_LARGE: u64 = 2 << 20;
/// Page size of an expandable segment in the small pool (Note [Expandable Segments]).
pub const EXPANDABLE_SMALL_PAGE: u64 = 2 << 20;
/// Page size of an expandable segment in the large pool (Note [Expandable Segments]).
pub const EXPANDABLE_LARGE_PAGE: u64 = 20 << 20;

/// The allocator settings that change its behaviour (`PYTORCH_CUDA_ALLOC_CONF`, AllocatorConfig.cpp)
/// plus the capacity it may reserve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocatorConfig {
    /// `max_split_size_mb` in bytes; `u64::MAX` = unlimited (the default).
    pub max_split_size: u64,
    /// `max_non_split_rounding_mb` in bytes: how much larger than the request an unsplittable
    /// (>= max_split_size) cached block may be and still serve it. Default kLargeBuffer (20 MiB).
    pub max_non_split_rounding: u64,
    /// `expandable_segments:True` (modelled approximately, see `Allocator`).
    pub expandable_segments: bool,
    /// `roundup_power2_divisions`, one value per power-of-two interval starting at 1 MiB
    /// (1, 2, 4, ... 32768 MiB and above; 16 intervals as in CUDAAllocatorConfig). 0 or 1 = off.
    pub roundup_power2_divisions: [u64; 16],
    /// Bytes the allocator may reserve before a cudaMalloc fails (`None` = unlimited). Models both
    /// `set_per_process_memory_fraction` and a card's free memory.
    pub capacity: Option<u64>,
    /// Where new segments go. The allocator breaks best-fit ties between free blocks of one size
    /// by address, so the address order the driver hands out changes how blocks pack. Not part
    /// of the serialised settings (a simulation choice, not a PyTorch setting).
    #[serde(skip)]
    pub segment_order: SegmentOrder,
}

/// Address order of new segments (`AllocatorConfig::segment_order`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SegmentOrder {
    /// Each below the previous ones, as the driver mostly hands them out in a fresh process.
    #[default]
    Descending,
    /// A pseudo-random order from a seed: a process whose driver hands out addresses in another
    /// order (one that ran and freed other work before). For measuring how much the peak
    /// reserved depends on the order (docs/accuracy.md).
    Shuffled(u64),
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            max_split_size: u64::MAX,
            max_non_split_rounding: LARGE_BUFFER,
            expandable_segments: false,
            roundup_power2_divisions: [0; 16],
            capacity: None,
            segment_order: SegmentOrder::Descending,
        }
    }
}

impl AllocatorConfig {
    /// Reads the native-allocator options of a `PYTORCH_CUDA_ALLOC_CONF` string
    /// (`max_split_size_mb:N,expandable_segments:True,roundup_power2_divisions:4,...`).
    /// Options that do not change the simulation are accepted and ignored.
    pub fn parse_alloc_conf(text: &str) -> Result<Self, String> {
        let mut c = AllocatorConfig::default();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once(':')
                .ok_or_else(|| format!("allocator option '{rest}' has no ':value'"))?;
            let key = key.trim().trim_start_matches(',').trim();
            let after = after.trim_start();
            // The value is a bracketed list or runs to the next comma.
            let (value, next) = if let Some(list) = after.strip_prefix('[') {
                let end = list
                    .find(']')
                    .ok_or_else(|| format!("allocator option '{key}': missing ']'"))?;
                (&after[..end + 2], &list[end + 1..])
            } else {
                match after.find(',') {
                    Some(i) => (&after[..i], &after[i..]),
                    None => (after, ""),
                }
            };
            let value = value.trim();
            let num = |v: &str| -> Result<u64, String> {
                v.parse::<u64>()
                    .map_err(|_| format!("allocator option '{key}': '{v}' is not a number"))
            };
            match key {
                "max_split_size_mb" => {
                    let mb = num(value)?;
                    // AllocatorConfig.cpp: must be >= kLargeBuffer / 1 MiB (20).
                    if mb < LARGE_BUFFER >> 20 {
                        return Err("max_split_size_mb must be >= 20".into());
                    }
                    c.max_split_size = mb << 20;
                }
                "max_non_split_rounding_mb" => {
                    let mb = num(value)?;
                    if mb < LARGE_BUFFER >> 20 {
                        return Err("max_non_split_rounding_mb must be >= 20".into());
                    }
                    c.max_non_split_rounding = mb << 20;
                }
                "expandable_segments" => {
                    c.expandable_segments = value.eq_ignore_ascii_case("true");
                }
                "roundup_power2_divisions" => {
                    if let Some(list) = value.strip_prefix('[') {
                        let list = list.trim_end_matches(']');
                        let mut last = 0u64;
                        for item in list.split(',').filter(|s| !s.trim().is_empty()) {
                            let (k, v) = item
                                .split_once(':')
                                .ok_or_else(|| format!("roundup_power2_divisions: bad '{item}'"))?;
                            let v = num(v.trim())?;
                            let k = k.trim();
                            if k == ">" {
                                for (i, slot) in c.roundup_power2_divisions.iter_mut().enumerate() {
                                    if (1u64 << i) > last {
                                        *slot = v;
                                    }
                                }
                            } else {
                                let mb = num(k)?;
                                let idx = 63 - mb.max(1).leading_zeros() as usize;
                                if idx < 16 {
                                    c.roundup_power2_divisions[idx] = v;
                                }
                                last = mb;
                            }
                        }
                    } else {
                        let v = num(value)?;
                        c.roundup_power2_divisions = [v; 16];
                    }
                }
                "backend"
                | "garbage_collection_threshold"
                | "release_lock_on_cudamalloc"
                | "pinned_use_cuda_host_register"
                | "pinned_num_register_threads"
                | "pinned_use_background_threads"
                | "pinned_reserve_segment_size_mb"
                | "graph_capture_record_stream_reuse"
                | "per_process_memory_fraction"
                | "throw_on_cudamalloc_oom" => {}
                other => return Err(format!("unrecognized allocator option '{other}'")),
            }
            rest = next.trim_start_matches(',').trim();
        }
        Ok(c)
    }

    /// `round_size` of CUDACachingAllocator.cpp.
    pub fn round_size(&self, size: u64) -> u64 {
        if size < MIN_BLOCK_SIZE {
            return MIN_BLOCK_SIZE;
        }
        let divisions = self.divisions_for(size);
        if divisions > 1 && size > MIN_BLOCK_SIZE * divisions {
            return roundup_power2_next_division(size, divisions);
        }
        MIN_BLOCK_SIZE * size.div_ceil(MIN_BLOCK_SIZE)
    }

    /// `CUDAAllocatorConfig::roundup_power2_divisions(size)`: intervals start at 1 MiB.
    fn divisions_for(&self, size: u64) -> u64 {
        let mb = size >> 20;
        let idx = if mb == 0 {
            0
        } else {
            (63 - mb.leading_zeros() as usize).min(15)
        };
        self.roundup_power2_divisions[idx]
    }
}

/// `roundup_power2_next_division` of CUDACachingAllocator.cpp: e.g. 1200 with 4 divisions → 1280.
pub fn roundup_power2_next_division(size: u64, divisions: u64) -> u64 {
    if size.is_power_of_two() {
        return size;
    }
    let floor = 1u64 << (63 - size.leading_zeros());
    let step = floor >> (63 - divisions.leading_zeros());
    if step == 0 {
        return floor << 1;
    }
    let round_floor = size & !(step - 1);
    if round_floor == size {
        size
    } else {
        round_floor + step
    }
}

/// `get_allocation_size`: the segment a new cudaMalloc gets for a rounded request.
pub fn allocation_size(rounded: u64) -> u64 {
    if rounded <= SMALL_SIZE {
        SMALL_BUFFER
    } else if rounded < MIN_LARGE_ALLOC {
        LARGE_BUFFER
    } else {
        ROUND_LARGE * rounded.div_ceil(ROUND_LARGE)
    }
}

/// Counters as `torch.cuda.memory_stats()` names them (aggregate over both pools).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocatorStats {
    /// `allocated_bytes.all.current`: sum of the (rounded) sizes of allocated blocks.
    pub allocated: u64,
    pub peak_allocated: u64,
    /// `requested_bytes.all.current`: sum of the sizes asked for.
    pub requested: u64,
    pub peak_requested: u64,
    /// `reserved_bytes.all.current`: bytes held from the device (segments, mapped pages).
    pub reserved: u64,
    pub peak_reserved: u64,
    /// `segment.all.current`.
    pub segments: u64,
    pub peak_segments: u64,
    pub num_alloc_retries: u64,
    pub num_ooms: u64,
    pub num_device_alloc: u64,
    pub num_device_free: u64,
}

/// Why an allocation failed: the figures of PyTorch's OOM message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OomError {
    /// The size asked for.
    pub requested: u64,
    /// "Tried to allocate": the segment size that could not be had.
    pub alloc_size: u64,
    pub capacity: u64,
    /// Allocated and reserved after the allocator released what it could.
    pub allocated: u64,
    pub reserved: u64,
}

#[derive(Clone, Debug)]
struct Block {
    size: u64,
    requested: u64,
    stream: u64,
    small: bool,
    allocated: bool,
    prev: Option<u64>,
    next: Option<u64>,
    /// Address of the expandable segment the block lives in, if any.
    expandable: Option<u64>,
}

/// One expandable segment (approximation): a virtual range of which `mapped` bytes from its start
/// are backed by pages; blocks tile the mapped part.
#[derive(Clone, Debug)]
struct ExpSegment {
    base: u64,
    mapped: u64,
    page: u64,
    /// Address of the last block (the one ending at `base + mapped`), if any.
    last: Option<u64>,
}

/// Free-block index key: ordered as `BlockComparatorSize` (stream, size, address).
type Key = (u64, u64, u64);

/// The simulated allocator of one device.
#[derive(Clone, Debug)]
pub struct Allocator {
    cfg: AllocatorConfig,
    blocks: FxMap<u64, Block>,
    free_small: BTreeSet<Key>,
    free_large: BTreeSet<Key>,
    /// Expandable segments by (small pool, stream).
    exp: HashMap<(bool, u64), ExpSegment>,
    next_addr: u64,
    stats: AllocatorStats,
}

/// HashMap with rustc's FxHasher: the simulator and the trace replay do millions of map
/// operations on u64 keys, where SipHash dominates.
pub type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
/// HashSet with rustc's FxHasher.
pub type FxSet<K> = std::collections::HashSet<K, rustc_hash::FxBuildHasher>;

/// Virtual address space reserved for one expandable segment (the real one reserves 1⅛ × the
/// card's memory; only non-overlap matters here).
const EXP_VA: u64 = 1 << 44;

/// The `n`-th segment's address under `SegmentOrder::Shuffled(seed)`: one of 2^20 slots 1 TiB
/// apart (a splitmix64 hash), far below the descending addresses. Two segments share a slot with
/// probability ~n^2 / 2^21; the caller probes past a taken slot.
fn shuffled_address(seed: u64, n: u64) -> u64 {
    let mut x = seed
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (1 << 40) + (x % (1 << 20)) * (1 << 30)
}

impl Allocator {
    pub fn new(cfg: AllocatorConfig) -> Self {
        Allocator {
            cfg,
            blocks: FxMap::default(),
            free_small: BTreeSet::new(),
            free_large: BTreeSet::new(),
            exp: HashMap::new(),
            next_addr: 1 << 50,
            stats: AllocatorStats::default(),
        }
    }

    pub fn config(&self) -> &AllocatorConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &AllocatorStats {
        &self.stats
    }

    /// Sets the peaks to the current values (`reset_peak_memory_stats`).
    pub fn reset_peaks(&mut self) {
        let s = &mut self.stats;
        s.peak_allocated = s.allocated;
        s.peak_requested = s.requested;
        s.peak_reserved = s.reserved;
        s.peak_segments = s.segments;
    }

    /// Changes the capacity (e.g. to replay a capped run).
    pub fn set_capacity(&mut self, capacity: Option<u64>) {
        self.cfg.capacity = capacity;
    }

    fn pool(&mut self, small: bool) -> &mut BTreeSet<Key> {
        if small {
            &mut self.free_small
        } else {
            &mut self.free_large
        }
    }

    fn insert_free(&mut self, addr: u64) {
        let b = &self.blocks[&addr];
        let key = (b.stream, b.size, addr);
        let small = b.small;
        self.pool(small).insert(key);
    }

    fn remove_free(&mut self, addr: u64) {
        let b = &self.blocks[&addr];
        let key = (b.stream, b.size, addr);
        let small = b.small;
        self.pool(small).remove(&key);
    }

    /// `malloc`: allocates `size` bytes on `stream`; returns the block's address.
    pub fn malloc(&mut self, size: u64, stream: u64) -> Result<u64, OomError> {
        let rounded = self.cfg.round_size(size);
        let small = rounded <= SMALL_SIZE;
        let alloc_size = allocation_size(rounded);
        let found = match self.get_free_block(rounded, stream, small) {
            Some(a) => Some(a),
            None => {
                let mut got = self.alloc_block(rounded, alloc_size, stream, small);
                if got.is_none() && self.release_available_cached_blocks(rounded, stream, small) {
                    got = self.alloc_block(rounded, alloc_size, stream, small);
                }
                if got.is_none() {
                    self.release_cached_blocks();
                    self.stats.num_alloc_retries += 1;
                    got = self.alloc_block(rounded, alloc_size, stream, small);
                }
                got
            }
        };
        let Some(addr) = found else {
            self.stats.num_ooms += 1;
            return Err(OomError {
                requested: size,
                alloc_size,
                capacity: self.cfg.capacity.unwrap_or(u64::MAX),
                allocated: self.stats.allocated,
                reserved: self.stats.reserved,
            });
        };
        Ok(self.alloc_found_block(addr, rounded, size))
    }

    /// `get_free_block`: best fit by (stream, size, address) in the request's pool.
    fn get_free_block(&mut self, rounded: u64, stream: u64, small: bool) -> Option<u64> {
        let max_split = self.cfg.max_split_size;
        let rounding = self.cfg.max_non_split_rounding;
        let pool = if small {
            &self.free_small
        } else {
            &self.free_large
        };
        let &(s, bsize, addr) = pool.range((stream, rounded, 0)..).next()?;
        if s != stream {
            return None;
        }
        // Do not return an oversized block for a request below max_split_size.
        if rounded < max_split && bsize >= max_split {
            return None;
        }
        // An oversized block may serve a request only within the rounding limit.
        if rounded >= max_split && bsize >= rounded.saturating_add(rounding) {
            return None;
        }
        self.pool(small).remove(&(s, bsize, addr));
        Some(addr)
    }

    /// `alloc_block`: a new segment (or, with expandable segments, more mapped pages).
    fn alloc_block(
        &mut self,
        rounded: u64,
        alloc_size: u64,
        stream: u64,
        small: bool,
    ) -> Option<u64> {
        if self.cfg.expandable_segments {
            return self.alloc_expandable(rounded, stream, small);
        }
        if let Some(cap) = self.cfg.capacity {
            if self.stats.reserved + alloc_size > cap {
                return None;
            }
        }
        // Segments are separate cudaMallocs: leave a gap so no two are adjacent. Each new one
        // goes below the previous ones, as the CUDA driver mostly hands them out; the address
        // decides best-fit ties between free blocks of equal size (docs/accuracy.md).
        let addr = match self.cfg.segment_order {
            SegmentOrder::Descending => {
                self.next_addr -= alloc_size + ROUND_LARGE;
                self.next_addr
            }
            SegmentOrder::Shuffled(seed) => {
                // a segment starts with a block at its base while it exists: probe past taken slots
                let mut n = self.stats.num_device_alloc;
                let mut a = shuffled_address(seed, n);
                while self.blocks.contains_key(&a) {
                    n += 1 << 32;
                    a = shuffled_address(seed, n);
                }
                a
            }
        };
        self.blocks.insert(
            addr,
            Block {
                size: alloc_size,
                requested: 0,
                stream,
                small,
                allocated: false,
                prev: None,
                next: None,
                expandable: None,
            },
        );
        self.stats.reserved += alloc_size;
        self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
        self.stats.segments += 1;
        self.stats.peak_segments = self.stats.peak_segments.max(self.stats.segments);
        self.stats.num_device_alloc += 1;
        Some(addr)
    }

    /// Approximate `try_allocate_expandable_block`: grow the pool's segment for this stream at its
    /// end by whole pages until its free tail holds the request.
    fn alloc_expandable(&mut self, rounded: u64, stream: u64, small: bool) -> Option<u64> {
        let page = if small {
            EXPANDABLE_SMALL_PAGE
        } else {
            EXPANDABLE_LARGE_PAGE
        };
        if !self.exp.contains_key(&(small, stream)) {
            let base = self.next_addr;
            self.next_addr += EXP_VA;
            self.exp.insert(
                (small, stream),
                ExpSegment {
                    base,
                    mapped: 0,
                    page,
                    last: None,
                },
            );
            self.stats.segments += 1;
            self.stats.peak_segments = self.stats.peak_segments.max(self.stats.segments);
        }
        let seg = self.exp[&(small, stream)].clone();
        let tail_free = seg
            .last
            .filter(|a| !self.blocks[a].allocated)
            .map(|a| self.blocks[&a].size)
            .unwrap_or(0);
        let need = rounded.saturating_sub(tail_free);
        let grow = page * need.div_ceil(page);
        if let Some(cap) = self.cfg.capacity {
            if self.stats.reserved + grow > cap {
                return None;
            }
        }
        self.stats.reserved += grow;
        self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
        self.stats.num_device_alloc += 1;
        let end = seg.base + seg.mapped;
        let addr = if tail_free > 0 {
            let a = seg.last.unwrap_or(end);
            self.remove_free(a);
            if let Some(b) = self.blocks.get_mut(&a) {
                b.size += grow;
            }
            a
        } else {
            self.blocks.insert(
                end,
                Block {
                    size: grow,
                    requested: 0,
                    stream,
                    small,
                    allocated: false,
                    prev: seg.last,
                    next: None,
                    expandable: Some(seg.base),
                },
            );
            if let Some(l) = seg.last {
                if let Some(b) = self.blocks.get_mut(&l) {
                    b.next = Some(end);
                }
            }
            end
        };
        if let Some(s) = self.exp.get_mut(&(small, stream)) {
            s.mapped += grow;
            s.last = Some(addr);
        }
        Some(addr)
    }

    /// `should_split` + `alloc_found_block`.
    fn alloc_found_block(&mut self, addr: u64, rounded: u64, requested: u64) -> u64 {
        let (bsize, small, exp) = {
            let b = &self.blocks[&addr];
            (b.size, b.small, b.expandable)
        };
        let remaining = bsize - rounded;
        let split = if small || exp.is_some() {
            remaining >= MIN_BLOCK_SIZE
        } else {
            rounded < self.cfg.max_split_size && remaining > SMALL_SIZE
        };
        if split {
            // The allocation takes the low addresses, the remainder stays free above it.
            let rest = addr + rounded;
            let (stream, next) = {
                let b = self.blocks.get_mut(&addr).expect("block exists");
                b.size = rounded;
                let n = b.next;
                b.next = Some(rest);
                (b.stream, n)
            };
            if let Some(n) = next {
                if let Some(nb) = self.blocks.get_mut(&n) {
                    nb.prev = Some(rest);
                }
            }
            self.blocks.insert(
                rest,
                Block {
                    size: remaining,
                    requested: 0,
                    stream,
                    small,
                    allocated: false,
                    prev: Some(addr),
                    next,
                    expandable: exp,
                },
            );
            if let Some(base) = exp {
                let key = (small, stream);
                if let Some(s) = self.exp.get_mut(&key) {
                    if s.base == base && s.last == Some(addr) {
                        s.last = Some(rest);
                    }
                }
            }
            self.insert_free(rest);
        }
        let b = self.blocks.get_mut(&addr).expect("block exists");
        b.allocated = true;
        b.requested = requested;
        let size = b.size;
        let s = &mut self.stats;
        s.allocated += size;
        s.peak_allocated = s.peak_allocated.max(s.allocated);
        s.requested += requested;
        s.peak_requested = s.peak_requested.max(s.requested);
        addr
    }

    /// The rounded size of an allocated block (what `allocated_bytes` counts).
    pub fn block_size(&self, addr: u64) -> Option<u64> {
        self.blocks
            .get(&addr)
            .filter(|b| b.allocated)
            .map(|b| b.size)
    }

    /// `free` + `free_block`: returns the block to its pool and merges it with free neighbours.
    /// Returns false when `addr` is not an allocated block.
    pub fn free(&mut self, addr: u64) -> bool {
        let Some(b) = self.blocks.get_mut(&addr) else {
            return false;
        };
        if !b.allocated {
            return false;
        }
        b.allocated = false;
        let (size, requested, prev, next) = (b.size, b.requested, b.prev, b.next);
        b.requested = 0;
        self.stats.allocated -= size;
        self.stats.requested -= requested;
        let mut addr = addr;
        // try_merge_blocks(block, prev) then (block, next)
        if let Some(p) = prev {
            if !self.blocks[&p].allocated {
                self.remove_free(p);
                let b = self.blocks.remove(&addr).expect("block exists");
                let pb = self.blocks.get_mut(&p).expect("prev exists");
                pb.size += b.size;
                pb.next = b.next;
                if let Some(n) = b.next {
                    if let Some(nb) = self.blocks.get_mut(&n) {
                        nb.prev = Some(p);
                    }
                }
                self.fix_exp_last(b.expandable, addr, p);
                addr = p;
            }
        }
        if let Some(n) = next {
            if !self.blocks[&n].allocated {
                self.remove_free(n);
                let nb = self.blocks.remove(&n).expect("next exists");
                let b = self.blocks.get_mut(&addr).expect("block exists");
                b.size += nb.size;
                b.next = nb.next;
                if let Some(nn) = nb.next {
                    if let Some(x) = self.blocks.get_mut(&nn) {
                        x.prev = Some(addr);
                    }
                }
                self.fix_exp_last(nb.expandable, n, addr);
            }
        }
        self.insert_free(addr);
        true
    }

    fn fix_exp_last(&mut self, exp: Option<u64>, old: u64, new: u64) {
        if exp.is_some() {
            for s in self.exp.values_mut() {
                if s.last == Some(old) {
                    s.last = Some(new);
                }
            }
        }
    }

    /// `release_available_cached_blocks`: with a max_split_size, free over-size cached segments,
    /// largest first, until the request could fit.
    fn release_available_cached_blocks(&mut self, rounded: u64, stream: u64, small: bool) -> bool {
        let max_split = self.cfg.max_split_size;
        if max_split == u64::MAX {
            return false;
        }
        let key_size = rounded.max(max_split);
        let pool = if small {
            &self.free_small
        } else {
            &self.free_large
        };
        let hit = pool
            .range((stream, key_size, 0)..)
            .next()
            .filter(|k| k.0 == stream)
            .copied();
        if let Some(k) = hit {
            if self.blocks[&k.2].expandable.is_none() {
                self.release_block(k.2);
                return true;
            }
        }
        // No single block is large enough: free over-size blocks from the largest down.
        let cands: Vec<Key> = pool
            .range(..(stream, key_size, 0))
            .rev()
            .take_while(|k| k.0 == stream && k.1 >= max_split)
            .copied()
            .collect();
        let mut released = 0;
        for k in cands {
            if released >= key_size {
                break;
            }
            if self.blocks[&k.2].expandable.is_none()
                && self.blocks[&k.2].prev.is_none()
                && self.blocks[&k.2].next.is_none()
            {
                released += k.1;
                self.release_block(k.2);
            }
        }
        released >= key_size
    }

    /// `release_block`: cudaFree of a whole, free, unsplit segment.
    fn release_block(&mut self, addr: u64) {
        self.remove_free(addr);
        if let Some(b) = self.blocks.remove(&addr) {
            self.stats.reserved -= b.size;
            self.stats.segments -= 1;
            self.stats.num_device_free += 1;
        }
    }

    /// `release_cached_blocks` (also what `torch.cuda.empty_cache()` does): frees every cached
    /// segment that holds no allocation; with expandable segments, unmaps the free pages at the
    /// end of each segment (interior free pages stay mapped: an approximation).
    pub fn release_cached_blocks(&mut self) {
        let whole: Vec<u64> = self
            .free_small
            .iter()
            .chain(self.free_large.iter())
            .map(|k| k.2)
            .filter(|a| {
                let b = &self.blocks[a];
                b.prev.is_none() && b.next.is_none() && b.expandable.is_none()
            })
            .collect();
        for a in whole {
            self.release_block(a);
        }
        let keys: Vec<(bool, u64)> = self.exp.keys().copied().collect();
        for key in keys {
            let seg = self.exp[&key].clone();
            let Some(last) = seg.last else { continue };
            if self.blocks[&last].allocated {
                continue;
            }
            let keep_to = seg.page * (last - seg.base).div_ceil(seg.page);
            let unmap = seg.mapped - keep_to;
            if unmap == 0 {
                continue;
            }
            self.remove_free(last);
            let b = self.blocks.get_mut(&last).expect("block exists");
            b.size -= unmap;
            let (empty, prev) = (b.size == 0, b.prev);
            self.stats.reserved -= unmap;
            self.stats.num_device_free += 1;
            let s = self.exp.get_mut(&key).expect("segment exists");
            s.mapped -= unmap;
            if empty {
                self.blocks.remove(&last);
                s.last = prev;
                if let Some(p) = prev {
                    if let Some(pb) = self.blocks.get_mut(&p) {
                        pb.next = None;
                    }
                }
            } else {
                self.insert_free(last);
            }
        }
    }

    /// The segments now held: (total size, bytes allocated in it, small pool).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let mut out = Vec::new();
        for (&a, b) in &self.blocks {
            if b.prev.is_some() || b.expandable.is_some() {
                continue;
            }
            let mut total = 0;
            let mut allocated = 0;
            let mut blocks = 0;
            let mut cur = Some(a);
            while let Some(c) = cur {
                let cb = &self.blocks[&c];
                total += cb.size;
                blocks += 1;
                if cb.allocated {
                    allocated += cb.size;
                }
                cur = cb.next;
            }
            out.push(SegmentInfo {
                address: a,
                total_size: total,
                allocated_size: allocated,
                blocks,
                small: b.small,
                expandable: false,
            });
        }
        for (&(small, _), s) in &self.exp {
            let mut allocated = 0;
            let mut blocks = 0;
            for b in self
                .blocks
                .values()
                .filter(|b| b.expandable == Some(s.base))
            {
                blocks += 1;
                if b.allocated {
                    allocated += b.size;
                }
            }
            out.push(SegmentInfo {
                address: s.base,
                total_size: s.mapped,
                allocated_size: allocated,
                blocks,
                small,
                expandable: true,
            });
        }
        out.sort_by_key(|s| s.address);
        out
    }
}

/// One segment of the simulated allocator, as a snapshot lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub address: u64,
    pub total_size: u64,
    pub allocated_size: u64,
    pub blocks: u64,
    pub small: bool,
    pub expandable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn alloc() -> Allocator {
        Allocator::new(AllocatorConfig::default())
    }

    #[test]
    fn rounding_matches_pytorch() {
        let c = AllocatorConfig::default();
        assert_eq!(c.round_size(1), 512);
        assert_eq!(c.round_size(512), 512);
        assert_eq!(c.round_size(513), 1024);
        assert_eq!(roundup_power2_next_division(1200, 4), 1280);
        assert_eq!(allocation_size(512), 2 * MIB);
        assert_eq!(allocation_size(MIB), 2 * MIB);
        assert_eq!(allocation_size(MIB + 512), 20 * MIB);
        assert_eq!(allocation_size(10 * MIB), 10 * MIB);
        assert_eq!(allocation_size(10 * MIB + 1), 12 * MIB);
        let c = AllocatorConfig {
            roundup_power2_divisions: [4; 16],
            ..AllocatorConfig::default()
        };
        // 1.2 MiB with 4 divisions of [1, 2) MiB → 1.25 MiB
        assert_eq!(c.round_size(1_258_291), 1_310_720);
    }

    #[test]
    fn small_requests_share_a_2mib_segment() {
        let mut a = alloc();
        let x = a.malloc(1000, 0).unwrap();
        let y = a.malloc(1000, 0).unwrap();
        assert_eq!(a.stats().segments, 1);
        assert_eq!(a.stats().reserved, 2 * MIB);
        assert_eq!(a.stats().allocated, 2048);
        assert_eq!(y, x + 1024);
        assert!(a.free(x));
        assert!(a.free(y));
        assert_eq!(a.stats().allocated, 0);
        // everything merged back into one free block
        assert_eq!(a.free_small.len(), 1);
        a.release_cached_blocks();
        assert_eq!(a.stats().reserved, 0);
    }

    #[test]
    fn mid_size_requests_pack_a_20mib_segment() {
        let mut a = alloc();
        for _ in 0..4 {
            a.malloc(4 * MIB, 0).unwrap();
        }
        // 4 MiB x 4 = 16 MiB fits in one 20 MiB segment; the 5th doesn't (remainder 4 MiB is free)
        assert_eq!(a.stats().segments, 1);
        a.malloc(4 * MIB, 0).unwrap();
        assert_eq!(a.stats().segments, 1);
        a.malloc(4 * MIB, 0).unwrap();
        assert_eq!(a.stats().segments, 2);
        assert_eq!(a.stats().reserved, 40 * MIB);
    }

    #[test]
    fn large_block_not_split_when_remainder_is_small() {
        let mut a = alloc();
        let x = a.malloc(12 * MIB, 0).unwrap();
        a.free(x);
        // 11.5 MiB request in the 12 MiB block: remainder 0.5 MiB <= 1 MiB, not split
        let y = a.malloc(11 * MIB + MIB / 2, 0).unwrap();
        assert_eq!(a.block_size(y), Some(12 * MIB));
        assert_eq!(a.stats().allocated, 12 * MIB);
    }

    #[test]
    fn best_fit_prefers_smallest_block() {
        let mut a = alloc();
        let big = a.malloc(40 * MIB, 0).unwrap();
        let small = a.malloc(12 * MIB, 0).unwrap();
        a.free(big);
        a.free(small);
        let z = a.malloc(11 * MIB, 0).unwrap();
        assert_eq!(z, small);
    }

    #[test]
    fn capacity_triggers_release_then_oom() {
        let cfg = AllocatorConfig {
            capacity: Some(100 * MIB),
            ..AllocatorConfig::default()
        };
        let mut a = Allocator::new(cfg);
        let x = a.malloc(40 * MIB, 0).unwrap();
        a.free(x);
        // 40 MiB cached + 70 MiB new > 100 MiB: release the cached segment, retry, succeed
        let _y = a.malloc(70 * MIB, 0).unwrap();
        assert_eq!(a.stats().num_alloc_retries, 1);
        assert_eq!(a.stats().reserved, 70 * MIB);
        let e = a.malloc(40 * MIB, 0).unwrap_err();
        assert_eq!(e.alloc_size, 40 * MIB);
        assert_eq!(a.stats().num_ooms, 1);
    }

    #[test]
    fn max_split_size_keeps_oversize_blocks_whole() {
        let mut cfg = AllocatorConfig::parse_alloc_conf("max_split_size_mb:32").unwrap();
        cfg.capacity = None;
        let mut a = Allocator::new(cfg);
        let x = a.malloc(100 * MIB, 0).unwrap();
        a.free(x);
        // 50 MiB request: the 100 MiB block is over-size and too big (>= 50+20): new segment
        a.malloc(50 * MIB, 0).unwrap();
        assert_eq!(a.stats().segments, 2);
        // 90 MiB request: within 20 MiB of the 100 MiB block: reuse it, unsplit
        let z = a.malloc(90 * MIB, 0).unwrap();
        assert_eq!(z, x);
        assert_eq!(a.block_size(z), Some(100 * MIB));
        // small request never takes an over-size block
        let mut b =
            Allocator::new(AllocatorConfig::parse_alloc_conf("max_split_size_mb:32").unwrap());
        let x = b.malloc(100 * MIB, 0).unwrap();
        b.free(x);
        b.malloc(12 * MIB, 0).unwrap();
        assert_eq!(b.stats().segments, 2);
    }

    #[test]
    fn expandable_segments_grow_in_pages() {
        let cfg = AllocatorConfig::parse_alloc_conf("expandable_segments:True").unwrap();
        let mut a = Allocator::new(cfg);
        let x = a.malloc(30 * MIB, 0).unwrap();
        assert_eq!(a.stats().reserved, 40 * MIB);
        let y = a.malloc(8 * MIB, 0).unwrap();
        // the 10 MiB free tail holds the 8 MiB
        assert_eq!(a.stats().reserved, 40 * MIB);
        assert_eq!(a.stats().segments, 1);
        a.free(y);
        a.free(x);
        a.release_cached_blocks();
        assert_eq!(a.stats().reserved, 0);
        a.malloc(MIB, 0).unwrap();
        assert_eq!(a.stats().reserved, 2 * MIB);
    }

    #[test]
    fn parses_alloc_conf() {
        let c = AllocatorConfig::parse_alloc_conf(
            "max_split_size_mb:128,roundup_power2_divisions:[256:1,512:2,1024:4,>:8],expandable_segments:False",
        )
        .unwrap();
        assert_eq!(c.max_split_size, 128 * MIB);
        assert_eq!(c.roundup_power2_divisions[8], 1);
        assert_eq!(c.roundup_power2_divisions[9], 2);
        assert_eq!(c.roundup_power2_divisions[10], 4);
        assert_eq!(c.roundup_power2_divisions[11], 8);
        assert!(AllocatorConfig::parse_alloc_conf("max_split_size_mb:10").is_err());
        assert!(AllocatorConfig::parse_alloc_conf("bogus:1").is_err());
    }
}
