//! Streaming over an input in fixed-size blocks with a literal prefilter: only lines containing
//! one of a few trigger words reach the regexes (plus the continuation lines a multi-line message
//! asks for). Memory is bounded by the block size whatever the input.
use std::io::{self, BufRead, Read};
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::parser::Parser;

/// Block size read at once (1 MiB: large enough that the per-block work is noise, small enough
/// to stay in L2/L3 cache).
const BLOCK: usize = 1 << 20;
/// Bytes of the input's start examined for binary data.
const SNIFF: usize = 64 * 1024;

/// Words at least one of which is on every line the parser reads (each family's trigger, and the
/// lines that extend an open TensorFlow/XLA or kernel event). Case-sensitive, as printed. Each is
/// cut to start where its first four bytes are rare in ordinary log text ("f memory" rather than
/// "out of memory"): the SIMD prefilter (Teddy) checks those bytes first, so common starts like
/// "out " or "memo" would send many lines to the slow path (measured: docs/performance.md).
pub const TRIGGERS: &[&str] = &[
    "f memory",       // CUDA/HIP/XPU/MPS/NCCL/BFC/XLA "out of memory", kernel "Out of memory:"
    "f Memory",       // "C10 Out of Memory"
    "UT_OF_",         // CUDA_ERROR_OUT_OF_MEMORY, ZE/UR_..._OUT_OF_DEVICE_MEMORY
    "tOfMemory",      // HIP_ERROR_OutOfMemory
    "xceed allowed",  // cudaMallocAsync "would exceed allowed memory"
    "CPUAllocator",   // DefaultCPUAllocator
    "enough memory",  // CPU allocator on Windows, "Torch: not enough memory", cuDNN workspace
    "ALLOC_FAILED",   // cuBLAS/cuSOLVER/cuSPARSE/cuDNN/cuFFT
    "NOT_INIT",       // CUBLAS/CUDNN_STATUS_NOT_INITIALIZED
    "cuDNN alg",      // "Unable to find a valid cuDNN algorithm"
    "pace violation", // cudnn_frontend "workspace violation"
    "exhausted",      // TensorFlow "Resource exhausted:"
    "Exhausted",      // ResourceExhaustedError
    "EXHAUSTED",      // XLA RESOURCE_EXHAUSTED
    "OOM when",       // TensorFlow "OOM when allocating tensor"
    "bfc_",           // BFC allocator dump lines
    "BufferAssignment", // XLA
    "Peak buffers",   // XLA
    "oom-",           // "invoked oom-killer", "oom-kill:constraint", SLURM "oom-kill event"
    "oom_",           // "oom_reaper", SLURM "oom_kill event"
    "Killed process", // kernel (both eras)
    "Kill process",   // kernel, legacy
    "aLoader worker", // DataLoader worker (pid N) ...
    "bus error",      // "Unexpected bus error encountered in worker"
    "</torch_",       // "unable to write to file </torch_...>" (/dev/shm full)
    "exitcode: -9",   // torchrun / elastic
    "-9 (pid",        // ChildFailedError box
    "GKILL)",         // "Signal 9 (SIGKILL) received by PID"
];

static PREFILTER: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostFirst)
        .build(TRIGGERS)
        .expect("prefilter automaton")
});

/// Whether a line could start or extend an event (the prefilter alone).
pub fn is_candidate(line: &[u8]) -> bool {
    PREFILTER.is_match(line)
}

/// Whether the start of an input looks like binary data rather than a log: more than 5% of the
/// sampled bytes are control characters other than tab, newline, CR, form feed and ESC (a stray
/// NUL, as PyTorch 2.3 prints for the GPU index, is fine).
pub fn looks_binary(sample: &[u8]) -> Option<String> {
    if sample.is_empty() {
        return None;
    }
    let ctrl = sample
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b)) || b == 0x7f)
        .count();
    if ctrl >= 8 && ctrl * 20 > sample.len() {
        Some(format!(
            "binary data, not a text log ({ctrl} of the first {} bytes are control characters)",
            sample.len()
        ))
    } else {
        None
    }
}

/// Reads everything from `r` into `parser`. Returns (lines, bytes).
pub fn scan<R: Read>(mut r: R, parser: &mut Parser) -> io::Result<(u64, u64)> {
    let mut buf = vec![0u8; BLOCK];
    let mut len = 0usize;
    let mut lineno: u64 = 1;
    let mut total: u64 = 0;
    let mut eof = false;
    let mut first = true;
    let mut last_byte_newline = true;
    loop {
        while !eof && len < buf.len() {
            match r.read(&mut buf[len..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    len += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if first {
            first = false;
            if let Some(msg) = looks_binary(&buf[..len.min(SNIFF)]) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
        }
        if len == 0 {
            break;
        }
        last_byte_newline = buf[len - 1] == b'\n';
        let end = if eof {
            len
        } else {
            match memchr::memrchr(b'\n', &buf[..len]) {
                Some(i) => i + 1,
                // one line longer than the block: cut it at a carriage return (progress bars)
                // or at the block's end; the line number does not advance at such a cut
                None => memchr::memrchr(b'\r', &buf[..len]).map_or(len, |i| i + 1),
            }
        };
        lineno = scan_block(&buf[..end], lineno, parser);
        buf.copy_within(end..len, 0);
        len -= end;
        if eof && len == 0 {
            break;
        }
    }
    let lines = if total == 0 {
        0
    } else if last_byte_newline {
        lineno - 1
    } else {
        lineno
    };
    Ok((lines, total))
}

/// Feeds the candidate lines of one block (which ends at a line end, or at the input's end)
/// to the parser. Returns the number of the line after the block.
fn scan_block(block: &[u8], mut lineno: u64, parser: &mut Parser) -> u64 {
    let mut pos = 0usize;
    while pos < block.len() {
        let (ls, le) = if parser.wants_next() {
            let le = memchr::memchr(b'\n', &block[pos..]).map_or(block.len(), |i| pos + i);
            (pos, le)
        } else {
            let Some(m) = PREFILTER.find(&block[pos..]) else {
                lineno += count_lines(&block[pos..]);
                return lineno;
            };
            let at = pos + m.start();
            let ls = memchr::memrchr(b'\n', &block[pos..at]).map_or(pos, |i| pos + i + 1);
            lineno += count_lines(&block[pos..ls]);
            let le = memchr::memchr(b'\n', &block[at..]).map_or(block.len(), |i| at + i);
            (ls, le)
        };
        parser.line(lineno, &block[ls..le]);
        if le < block.len() {
            lineno += 1;
        }
        pos = le + 1;
    }
    lineno
}

fn count_lines(s: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', s).count() as u64
}

/// Reads a `BufRead`, transparently decompressing gzip (`1f 8b`).
pub fn scan_maybe_gzip<R: BufRead>(mut r: R, parser: &mut Parser) -> io::Result<(u64, u64)> {
    let head = r.fill_buf()?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        scan(flate2::read::MultiGzDecoder::new(r), parser)
    } else {
        scan(r, parser)
    }
}
