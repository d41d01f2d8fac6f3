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
    /// Largest output of a convolution with overlapping windows (0 without convolutions).
    pub conv_output_max: u64,
    /// Small blocks (autocast weight copies of checkpointed blocks) freed before the peak: they
    /// sit in 2 MiB / 20 MiB segments that the large requests of backward cannot use.
    pub freed_small: u64,
}

/// cuDNN workspace of a convolution with overlapping windows, as a multiple of its output.
/// With `torch.backends.cudnn.benchmark = False` PyTorch takes cuDNN's heuristic choice and
/// allocates the workspace it asks for through the caching allocator (`Conv_v8.cpp`); for 3x3
/// and 7x7 kernels those are transformed-tile (Winograd / FFT) or precomputed-index GEMM
/// engines whose workspace holds the transformed input and output (F(4x4,3x3) Winograd tiles
/// are 36/16 = 2.25x each). The blocks are freed after each call but stay reserved. 4x is what
/// the ResNet-18 calibration rows show (reserved - allocated = 4.0-6.0x the conv1 output,
/// H100, cuDNN 9); it is a single constant for every such convolution, not a per-model factor.
pub const CUDNN_WORKSPACE_PER_OUTPUT: u64 = 4;

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
    let ws = i.conv_output_max * CUDNN_WORKSPACE_PER_OUTPUT;
    let r = i.peak_allocated + waste + i.largest_allocation + ws + i.freed_small;
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
