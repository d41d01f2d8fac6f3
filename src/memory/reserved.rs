//! Reserved vs allocated: what PyTorch's caching allocator holds beyond the live tensors.
//!
//! The allocator (`c10/cuda/CUDACachingAllocator.cpp`) rounds every request to 512 B; requests
//! up to 1 MiB come from 2 MiB segments of the small pool, requests up to 10 MiB from 20 MiB
//! segments of the large pool, and larger requests get a segment of their own, rounded up to
//! 2 MiB. The tail of such a segment is a free block that only requests between 1 MiB and the
//! tail's size could use, so it stays idle. Segments are never returned during training, and a
//! free block can be split but never joined with a block of another segment: when the step
//! needs a temporary larger than every cached free block (the gradient of the logits, an
//! attention matrix), a new segment is created while the old free blocks stay reserved.
#[cfg(test)]
use crate::units::KIB;
use crate::units::MIB;

pub struct Inputs<'a> {
    pub peak_allocated: u64,
    /// Largest single allocation of the step.
    pub largest_allocation: u64,
    /// Live tensors around the peak: (bytes, count).
    pub live: &'a [(u64, u32)],
    /// Largest cuDNN convolution workspace of the step (0 without convolutions): the allocator
    /// keeps its block cached after the call.
    pub conv_workspace_max: u64,
    /// Small blocks (autocast weight copies of checkpointed blocks) freed before the peak: they
    /// sit in 2 MiB / 20 MiB segments that the large requests of backward cannot use.
    pub freed_small: u64,
}

/// `kMinBlockSize`: every request is rounded up to a multiple of 512 bytes.
const MIN_BLOCK: u64 = 512;
/// `kSmallSize`: requests up to 1 MiB are served from the small pool.
const SMALL_SIZE: u64 = MIB;
/// `kSmallBuffer`: small-pool segments are 2 MiB.
const SMALL_BUFFER: u64 = 2 * MIB;
/// `kMinLargeAlloc`: requests under 10 MiB get a 20 MiB segment (`kLargeBuffer`).
const MIN_LARGE_ALLOC: u64 = 10 * MIB;
const LARGE_BUFFER: u64 = 20 * MIB;
/// `kRoundLarge`: larger segments are rounded up to 2 MiB.
const ROUND_LARGE: u64 = 2 * MIB;

/// Bytes a live allocation of `size` keeps reserved beyond itself.
pub fn rounding_waste(size: u64) -> u64 {
    let r = size.div_ceil(MIN_BLOCK) * MIN_BLOCK;
    if size <= SMALL_SIZE {
        // packed into 2 MiB segments: only the 512 B rounding, plus the segment tail shared
        // by all the blocks that fit into it
        let per_seg = (SMALL_BUFFER / r).max(1);
        (r - size) + (SMALL_BUFFER - per_seg * r) / per_seg
    } else if size < MIN_LARGE_ALLOC {
        let per_seg = (LARGE_BUFFER / r).max(1);
        (r - size) + (LARGE_BUFFER - per_seg * r) / per_seg
    } else {
        // its own segment; the tail past `size` is a free block nobody of that size can use
        let seg = r.div_ceil(ROUND_LARGE) * ROUND_LARGE;
        let tail = seg - r;
        // a tail above 1 MiB could serve a mid-size request later; below it, only the small
        // pool's requests would fit, and they never come from the large pool
        if tail > SMALL_SIZE {
            tail
        } else {
            seg - size
        }
    }
}

/// Peak reserved bytes: the peak allocation, the segment rounding of the tensors alive at the
/// peak, one free block the size of the largest request, left over when that request could
/// not reuse the cached blocks, and the cached cuDNN workspace of convolutions.
pub fn reserved(i: &Inputs) -> u64 {
    let waste: u64 = i
        .live
        .iter()
        .map(|&(s, n)| rounding_waste(s) * n as u64)
        .sum();
    let r = i.peak_allocated + waste + i.largest_allocation + i.conv_workspace_max + i.freed_small;
    r.div_ceil(ROUND_LARGE) * ROUND_LARGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_follows_the_allocator() {
        // 24 MiB exactly: a segment of its own, nothing wasted
        assert_eq!(rounding_waste(24 * MIB), 0);
        // 48.19 MiB (a NavDP ViT activation at batch 16): 50 MiB segment, 1.81 MiB idle
        let s = 50_528_256;
        assert_eq!(rounding_waste(s), 50 * MIB - s);
        // 512 KiB blocks: four per 2 MiB segment, nothing wasted
        assert_eq!(rounding_waste(512 * KIB), 0);
        // 3 MiB blocks: six per 20 MiB segment, 2 MiB tail shared by six
        assert_eq!(rounding_waste(3 * MIB), 2 * MIB / 6);
    }
}

// ---------------------------------------------------------------------------------------------
// Replay of a training step through the caching allocator.

use super::free_set::FreeSet;
use super::sim::{Ev, Profile};
use crate::knobs::Optimizer;
use crate::model::graph::Param;

const NONE: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Block {
    size: u64,
    free: bool,
    small: bool,
    prev: usize,
    next: usize,
    /// Creation order: best-fit ties go to the block made first (the replay's stand-in for the
    /// lowest address).
    seq: u64,
}

/// The parts of `CUDACachingAllocator.cpp` that decide how much is reserved: two pools, best
/// fit (smallest cached block that is large enough), splitting, coalescing of neighbours within
/// a segment, segment sizes by request size, and no release of segments.
#[derive(Default)]
pub struct Allocator {
    /// Blocks by index; a block merged into its neighbour leaves its index to the next one
    /// made (`dead`), so the table stays as small as the segments' blocks.
    blocks: Vec<Block>,
    dead: Vec<usize>,
    made: u64,
    /// Free blocks as (size, seq << 32 | index): ordered by size, then creation.
    free_small: FreeSet,
    free_large: FreeSet,
    pub reserved: u64,
    pub peak_reserved: u64,
    pub allocated: u64,
    pub peak_allocated: u64,
}

impl Allocator {
    fn set(&mut self, small: bool) -> &mut FreeSet {
        if small {
            &mut self.free_small
        } else {
            &mut self.free_large
        }
    }

    /// The free-set key of block `id`.
    fn key(&self, id: usize) -> (u64, usize) {
        let b = &self.blocks[id];
        (b.size, (b.seq << 32 | id as u64) as usize)
    }

    fn new_block(&mut self, size: u64, small: bool, prev: usize, next: usize) -> usize {
        // the free-set key packs both in 64 bits (a replay makes thousands of blocks a step)
        debug_assert!(self.made < 1 << 32 && self.blocks.len() < 1 << 32);
        let b = Block {
            size,
            free: true,
            small,
            prev,
            next,
            seq: self.made,
        };
        self.made += 1;
        match self.dead.pop() {
            Some(id) => {
                self.blocks[id] = b;
                id
            }
            None => {
                self.blocks.push(b);
                self.blocks.len() - 1
            }
        }
    }

    /// `round_size`: multiples of 512 bytes.
    pub fn round(size: u64) -> u64 {
        size.max(1).div_ceil(MIN_BLOCK) * MIN_BLOCK
    }

    /// `get_allocation_size`: the segment a request that finds no cached block creates.
    pub fn segment_size(rounded: u64) -> u64 {
        if rounded <= SMALL_SIZE {
            SMALL_BUFFER
        } else if rounded < MIN_LARGE_ALLOC {
            LARGE_BUFFER
        } else {
            rounded.div_ceil(ROUND_LARGE) * ROUND_LARGE
        }
    }

    pub fn malloc(&mut self, size: u64) -> usize {
        let r = Self::round(size);
        let small = r <= SMALL_SIZE;
        let id = match self.set(small).take_first_from((r, 0)) {
            Some(k) => k.1 & (u32::MAX as usize),
            None => {
                let seg = Self::segment_size(r);
                self.reserved += seg;
                self.peak_reserved = self.peak_reserved.max(self.reserved);
                self.new_block(seg, small, NONE, NONE)
            }
        };
        let rem = self.blocks[id].size - r;
        // `should_split`: small blocks split when >= 512 B remain, large ones when > 1 MiB remain
        let split = if small {
            rem >= MIN_BLOCK
        } else {
            rem > SMALL_SIZE
        };
        if split {
            let next = self.blocks[id].next;
            let nb = self.new_block(rem, small, id, next);
            if next != NONE {
                self.blocks[next].prev = nb;
            }
            self.blocks[id].next = nb;
            self.blocks[id].size = r;
            let k = self.key(nb);
            self.set(small).insert(k);
        }
        self.blocks[id].free = false;
        self.allocated += self.blocks[id].size;
        self.peak_allocated = self.peak_allocated.max(self.allocated);
        id
    }

    /// Block `a` takes in the block after it in its segment, whose index goes to `dead`; `listed`
    /// (one of the two, the one already free) leaves the free set first, as its size changes or
    /// it goes.
    fn absorb_next(&mut self, a: usize, listed: usize) {
        let k = self.key(listed);
        let small = self.blocks[a].small;
        self.set(small).remove(&k);
        let b = self.blocks[a].next;
        self.blocks[a].size += self.blocks[b].size;
        let after = self.blocks[b].next;
        self.blocks[a].next = after;
        if after != NONE {
            self.blocks[after].prev = a;
        }
        self.dead.push(b);
    }

    pub fn free(&mut self, id: usize) {
        let mut id = id;
        let small = self.blocks[id].small;
        self.allocated -= self.blocks[id].size;
        self.blocks[id].free = true;
        let next = self.blocks[id].next;
        if next != NONE && self.blocks[next].free {
            self.absorb_next(id, next);
        }
        let prev = self.blocks[id].prev;
        if prev != NONE && self.blocks[prev].free {
            self.absorb_next(prev, prev);
            id = prev;
        }
        let k = self.key(id);
        self.set(small).insert(k);
    }
}

/// What the replay needs besides the profile.
pub struct Replay<'a> {
    pub batch: u64,
    pub grad_accum: u64,
    pub params: &'a [Param],
    pub param_bytes: f64,
    pub buffer_bytes: u64,
    pub input_bytes_per_sample: f64,
    pub optimizer: Optimizer,
    pub cublas_workspace: u64,
    /// Sizes the reduction buffers (`reduction::row_sum_buffer`).
    pub device: super::reduction::Device,
}

/// Peak reserved bytes of a training process running two steps (warm-up, where the optimizer
/// state is created, and a steady one) as the calibration protocol does.
pub fn replay(p: &Profile, r: &Replay) -> (u64, u64) {
    let mut a = Allocator::default();
    let b = r.batch as f64;
    for prm in r.params {
        a.malloc((prm.elems() as f64 * r.param_bytes) as u64);
    }
    if r.buffer_bytes > 0 {
        a.malloc(r.buffer_bytes);
    }
    for _ in 0..r.grad_accum {
        a.malloc((r.input_bytes_per_sample * b) as u64);
    }
    let mut slot: Vec<usize> = vec![NONE; p.slots];
    let mut pgrads: Vec<usize> = Vec::new();
    let mut is_pgrad: Vec<bool> = vec![false; p.slots];
    let mut state_made = false;
    let mut ws_made = false;
    for _step in 0..2 {
        for _micro in 0..r.grad_accum {
            for e in &p.events {
                match *e {
                    Ev::Alloc {
                        slot: s,
                        per_sample,
                        abs,
                    } => {
                        if !ws_made {
                            // cuBLAS workspace at the first matmul, kept
                            a.malloc(r.cublas_workspace);
                            ws_made = true;
                        }
                        let s = s as usize;
                        if slot[s] != NONE {
                            a.free(slot[s]);
                        }
                        slot[s] = a.malloc((per_sample * b + abs).max(1.0) as u64);
                    }
                    Ev::Free { slot: s } => {
                        let s = s as usize;
                        if slot[s] != NONE {
                            a.free(slot[s]);
                            slot[s] = NONE;
                        }
                    }
                    Ev::ParamGrad { slot: s, abs } => {
                        let s = s as usize;
                        if slot[s] == NONE {
                            slot[s] = a.malloc(abs as u64);
                            pgrads.push(s);
                            is_pgrad[s] = true;
                        }
                    }
                    Ev::RowSum {
                        slot: s,
                        cols,
                        rows_per_sample,
                    } => {
                        let bytes =
                            super::reduction::row_sum_at(cols, rows_per_sample, b, r.device);
                        if bytes > 0 {
                            slot[s as usize] = a.malloc(bytes);
                        }
                    }
                    Ev::EndForward => {}
                }
            }
            // anything the walk left allocated (never expected) goes with the micro-batch
            for (s, id) in slot.iter_mut().enumerate() {
                if *id != NONE && !is_pgrad[s] {
                    a.free(*id);
                    *id = NONE;
                }
            }
        }
        // optimizer.step(): state at the first step (zeros_like per parameter, in order),
        // then the foreach temporaries of the update
        let trainable: Vec<&Param> = r.params.iter().filter(|p| p.trainable).collect();
        let (n_state, temps) = match r.optimizer {
            Optimizer::Adamw | Optimizer::Adam => (2, true),
            Optimizer::AdamwFused => (2, false),
            Optimizer::SgdMomentum => (1, false),
            Optimizer::Sgd => (0, false),
            Optimizer::Adafactor | Optimizer::Adamw8bit => (0, false),
        };
        if !state_made {
            for prm in &trainable {
                for _ in 0..n_state {
                    a.malloc((prm.elems() as f64 * r.param_bytes) as u64);
                }
            }
            state_made = true;
        }
        if temps {
            let t: Vec<usize> = trainable
                .iter()
                .map(|prm| a.malloc((prm.elems() as f64 * r.param_bytes) as u64))
                .collect();
            for id in t {
                a.free(id);
            }
        }
        // zero_grad(set_to_none=True)
        for s in pgrads.drain(..) {
            is_pgrad[s] = false;
            if slot[s] != NONE {
                a.free(slot[s]);
                slot[s] = NONE;
            }
        }
    }
    (a.peak_reserved, a.peak_allocated)
}

#[cfg(test)]
mod allocator_tests {
    use super::*;

    #[test]
    fn best_fit_split_and_coalesce() {
        let mut a = Allocator::default();
        let x = a.malloc(48 * MIB + 100);
        assert_eq!(a.reserved, 50 * MIB);
        a.free(x);
        // a 24 MiB request splits the cached 50 MiB segment instead of creating one
        let y = a.malloc(24 * MIB);
        let z = a.malloc(24 * MIB);
        assert_eq!(a.reserved, 50 * MIB);
        a.free(y);
        a.free(z);
        // coalesced back: a 49 MiB request fits again
        a.malloc(49 * MIB);
        assert_eq!(a.reserved, 50 * MIB);
        // small requests use their own 2 MiB segments
        a.malloc(1000);
        assert_eq!(a.reserved, 52 * MIB);
        // 3 MiB: a 20 MiB segment
        a.malloc(3 * MIB);
        assert_eq!(a.reserved, 72 * MIB);
    }

    /// (offset in its segment, segment size) of block `id` of a block table.
    fn place(blocks: &[Block], id: usize) -> (u64, u64) {
        let (mut head, mut offset) = (id, 0);
        while blocks[head].prev != NONE {
            head = blocks[head].prev;
            offset += blocks[head].size;
        }
        let (mut seg, mut b) = (0, head);
        while b != NONE {
            seg += blocks[b].size;
            b = blocks[b].next;
        }
        (offset, seg)
    }

    /// The allocator as first written: a block per index, never reused, ties by index.
    #[derive(Default)]
    struct Plain {
        blocks: Vec<Block>,
        free: [std::collections::BTreeSet<(u64, usize)>; 2],
        reserved: u64,
        /// The block the last `malloc` returned.
        last: usize,
    }

    impl Plain {
        fn malloc(&mut self, size: u64) -> (u64, u64) {
            let r = Allocator::round(size);
            let small = r <= SMALL_SIZE;
            let pool = &mut self.free[small as usize];
            let id = match pool.range((r, 0)..).next().copied() {
                Some(k) => {
                    pool.remove(&k);
                    k.1
                }
                None => {
                    let seg = Allocator::segment_size(r);
                    self.reserved += seg;
                    self.blocks.push(Block {
                        size: seg,
                        free: true,
                        small,
                        prev: NONE,
                        next: NONE,
                        seq: 0,
                    });
                    self.blocks.len() - 1
                }
            };
            let rem = self.blocks[id].size - r;
            if (small && rem >= MIN_BLOCK) || (!small && rem > SMALL_SIZE) {
                let next = self.blocks[id].next;
                self.blocks.push(Block {
                    size: rem,
                    free: true,
                    small,
                    prev: id,
                    next,
                    seq: 0,
                });
                let nb = self.blocks.len() - 1;
                if next != NONE {
                    self.blocks[next].prev = nb;
                }
                self.blocks[id].next = nb;
                self.blocks[id].size = r;
                self.free[small as usize].insert((rem, nb));
            }
            self.blocks[id].free = false;
            self.last = id;
            place(&self.blocks, id)
        }

        fn free(&mut self, id: usize) {
            let mut id = id;
            let small = self.blocks[id].small as usize;
            self.blocks[id].free = true;
            let next = self.blocks[id].next;
            if next != NONE && self.blocks[next].free {
                self.free[small].remove(&(self.blocks[next].size, next));
                self.blocks[id].size += self.blocks[next].size;
                let nn = self.blocks[next].next;
                self.blocks[id].next = nn;
                if nn != NONE {
                    self.blocks[nn].prev = id;
                }
            }
            let prev = self.blocks[id].prev;
            if prev != NONE && self.blocks[prev].free {
                self.free[small].remove(&(self.blocks[prev].size, prev));
                self.blocks[prev].size += self.blocks[id].size;
                let nx = self.blocks[id].next;
                self.blocks[prev].next = nx;
                if nx != NONE {
                    self.blocks[nx].prev = prev;
                }
                id = prev;
            }
            self.free[small].insert((self.blocks[id].size, id));
        }
    }

    proptest::proptest! {
        /// Reusing the indices of merged blocks changes no decision: every request lands at the
        /// same offset of a segment of the same size as in the allocator that never reuses them,
        /// and the same bytes are reserved after every step.
        #[test]
        fn reused_block_indices_place_blocks_as_before(ops in proptest::collection::vec(
            (0u8..3, 0usize..10, 0usize..64),
            1..300,
        )) {
            const SIZES: [u64; 10] = [
                512, 1000, 300_000, MIB, 3 * MIB, 4 * MIB, 12 * MIB, 16 * MIB, 30 * MIB,
                48 * MIB + 100,
            ];
            let mut a = Allocator::default();
            let mut p = Plain::default();
            let mut live: Vec<(usize, usize)> = Vec::new();
            for (op, size, pick) in ops {
                if op < 2 || live.is_empty() {
                    let id = a.malloc(SIZES[size]);
                    let at = p.malloc(SIZES[size]);
                    proptest::prop_assert_eq!(place(&a.blocks, id), at);
                    live.push((id, p.last));
                } else {
                    let (id, pid) = live.swap_remove(pick % live.len());
                    a.free(id);
                    p.free(pid);
                }
                proptest::prop_assert_eq!(a.reserved, p.reserved);
            }
        }
    }
}
