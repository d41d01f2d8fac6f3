//! Reserved vs allocated: what PyTorch's caching allocator holds beyond the live tensors.
//!
//! The allocator (`c10/cuda/CUDACachingAllocator.cpp`) rounds requests to 512 B, serves requests
//! under 1 MiB from 2 MiB segments and requests under 10 MiB from 20 MiB segments, larger ones
//! from segments of their own size rounded to 2 MiB, and never returns segments to the driver
//! during training. A freed block can be split for smaller requests but never joined with a
//! block of another segment, so when the step needs a temporary larger than any cached free
//! block (the gradient of the logits, an attention matrix, a convolution workspace) a new segment
//! is created while the older free blocks stay reserved.
use crate::units::MIB;

pub struct Inputs {
    pub peak_allocated: u64,
    /// Largest single allocation of the step.
    pub largest_allocation: u64,
    /// Bytes of temporaries allocated and freed during the step.
    pub churn: u64,
}

/// Large-pool segment granularity (`kRoundLarge`, 2 MiB).
const ROUND_LARGE: u64 = 2 * MIB;

/// Peak reserved bytes: the peak allocation plus one free block the size of the largest request,
/// left over when that request could not reuse the cached blocks (see the module doc).
pub fn reserved(i: &Inputs) -> u64 {
    let _ = i.churn;
    let r = i.peak_allocated + i.largest_allocation;
    r.div_ceil(ROUND_LARGE) * ROUND_LARGE
}
