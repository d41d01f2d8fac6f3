//! The staging buffer of PyTorch's CUDA reduction kernel.
//!
//! The gradient of a bias, a LayerScale or an RMSNorm weight is the sum of the output gradient
//! over all rows (`sum_to` in the autograd formulas): a reduction of a contiguous `[rows, cols]`
//! tensor over its slow dimension. `setReduceConfig` (`aten/src/ATen/native/cuda/Reduce.cuh`)
//! splits each output's inputs across `ctas_per_output` thread blocks when there are few
//! outputs and many rows, and the blocks combine their partial sums through a buffer that
//! `reduce_kernel`'s launcher allocates through the caching allocator and frees when the call
//! returns: `sizeof(acc) * cols * ctas_per_output * block.x * output_vec_size` bytes. On an
//! H100 that is up to ~132 MiB per call whatever the layer's width (the measured ViT-B/16 and
//! NavDP-like traces hold 73.9, 96.4, 132.0 and 132.75 MiB buffers, each matched to the byte by
//! this function), allocated in backward while most activations are still alive.

/// What `setReduceConfig` reads off the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// `multiProcessorCount`.
    pub sms: u64,
    /// `maxThreadsPerMultiProcessor`.
    pub threads_per_sm: u64,
}

/// The calibration card (H100 SXM5: 132 SMs, 2048 threads per SM), used when no GPU is named.
pub const CALIBRATION_DEVICE: Device = Device {
    sms: 132,
    threads_per_sm: 2048,
};

impl Device {
    /// `maxThreadsPerMultiProcessor` by compute capability (CUDA C Programming Guide, table of
    /// technical specifications): 1024 on Turing, 1536 on GA10x / Ada / consumer Blackwell,
    /// 2048 on V100, A100, H100 and B200.
    pub fn threads_per_sm(cc: (u32, u32)) -> u64 {
        match cc {
            (7, 5) => 1024,
            (8, 6) | (8, 7) | (8, 9) | (12, _) => 1536,
            _ => 2048,
        }
    }
}

/// `last_pow2`: the largest power of two <= n (at least 1).
fn last_pow2(n: u64) -> u64 {
    if n == 0 {
        1
    } else {
        1 << (63 - n.leading_zeros())
    }
}

/// Bytes of the staging buffer (0 when the kernel does not split rows across blocks) for the sum
/// over `rows` of a contiguous `[rows, cols]` fp32/fp16/bf16 tensor (float accumulator).
pub fn row_sum_buffer(cols: u64, rows: u64, dev: Device) -> u64 {
    const WARP: u64 = 32;
    const MAX_THREADS: u64 = 512; // `mnt_wrapper<T>::MAX_NUM_THREADS` for real types
    const ACC: u64 = 4; // sizeof(float), the accumulator of fp32 and half sums
    if cols == 0 || rows < 2 {
        return 0;
    }
    // "vectorize along output": the largest of 4, 2, 1 dividing the output size and strides
    let mut vec = 4;
    while cols % vec != 0 {
        vec /= 2;
    }
    let dim0 = cols / vec;
    let dim1 = rows;
    let max_threads = MAX_THREADS / vec;
    let p0 = if dim0 < max_threads {
        last_pow2(dim0)
    } else {
        max_threads
    };
    let p1 = if dim1 < max_threads {
        last_pow2(dim1)
    } else {
        max_threads
    };
    let mut width = p0.min(WARP);
    let height = p1.min(max_threads / width);
    width = p0.min(max_threads / height);
    let threads = width * height;
    // outputs across the lanes of a warp, inputs across warps when each thread gets >= 16
    let step_output = width;
    let warp_split = (height * 16).min(256);
    if rows < warp_split {
        return 0;
    }
    let step_input = height;
    let per_thread = rows.div_ceil(step_input);
    let target = dev.sms * (dev.threads_per_sm / threads).max(1);
    let grid = dim0.div_ceil(step_output);
    if per_thread < 256 || grid > target {
        return 0;
    }
    let ctas = target
        .div_ceil(grid)
        .min(per_thread.div_ceil(16))
        .max(per_thread.div_ceil(256));
    if ctas <= 1 {
        return 0;
    }
    ACC * cols * ctas * width * vec
}

/// `row_sum_buffer` of a reduction over `rows_per_sample` rows per sample at batch `batch` (the
/// analytic walk's `RowSum` events and points).
pub fn row_sum_at(cols: u64, rows_per_sample: f64, batch: f64, dev: Device) -> u64 {
    row_sum_buffer(cols, (rows_per_sample * batch).round() as u64, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers measured with torch 2.11 on an H100-class card (132 SMs; allocator trace of
    /// `scripts/gpu-measure.py`): bias gradients of ViT-B/16 at batch 64 (12608 rows) and of the
    /// NavDP-like ViTs at batch 16 (16 x 8 frames x 257 tokens = 32896 rows).
    #[test]
    fn matches_the_measured_buffers() {
        let d = CALIBRATION_DEVICE;
        assert_eq!(row_sum_buffer(768, 12608, d), 77_463_552);
        assert_eq!(row_sum_buffer(3072, 12608, d), 138_412_032);
        assert_eq!(row_sum_buffer(2304, 12608, d), 139_198_464);
        assert_eq!(row_sum_buffer(384, 32896, d), 101_056_512);
        assert_eq!(row_sum_buffer(1536, 32896, d), 138_412_032);
        assert_eq!(row_sum_buffer(1152, 32896, d), 138_608_640);
    }

    #[test]
    fn small_reductions_need_no_buffer() {
        let d = CALIBRATION_DEVICE;
        // a classifier bias at batch 128: too few rows per thread
        assert_eq!(row_sum_buffer(1000, 128, d), 0);
        assert_eq!(row_sum_buffer(768, 1, d), 0);
        // fewer SMs, fewer blocks: a smaller buffer (RTX 3090: 82 SMs, 1536 threads)
        let small = Device {
            sms: 82,
            threads_per_sm: 1536,
        };
        assert!(row_sum_buffer(3072, 12608, small) < row_sum_buffer(3072, 12608, d));
    }
}
