//! Out-of-memory events in logs: every message family of `reference/oom-formats.md` (PyTorch
//! CUDA/HIP/XPU/MPS allocators of every release, cudaMallocAsync, raw CUDA errors, the CPU
//! allocator, cuBLAS/cuDNN/NCCL, JAX/XLA, TensorFlow, the kernel OOM killer, DataLoader workers,
//! torchrun), read from a stream with bounded memory, with a cause and advice for each event.
//!
//! ```
//! let log = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a \
//!            total capacity of 23.55 GiB of which 11.06 MiB is free.";
//! let events = oomdoc::oom::parse_str(log);
//! assert_eq!(events[0].kind, oomdoc::oom::OomKind::CudaOom);
//! assert_eq!(events[0].requested_bytes, Some(20 * 1024 * 1024));
//! ```
pub mod analysis;
pub mod clean;
pub mod event;
pub mod parser;
pub mod report;
pub mod scan;
pub mod size;
pub mod versions;

use std::io::{self, BufRead};

pub use analysis::{diagnose, Advice, Cause};
pub use event::{OomEvent, OomKind, OtherProcess, Report};
pub use parser::Parser;

/// Every event in a text, in line order.
pub fn parse_str(text: &str) -> Vec<OomEvent> {
    parse_bytes(text.as_bytes())
}

/// Every event in bytes (invalid UTF-8 is read lossily; binary data gives no events).
pub fn parse_bytes(bytes: &[u8]) -> Vec<OomEvent> {
    let mut parser = Parser::new();
    let mut lineno = 1u64;
    let mut pos = 0usize;
    // Line by line without the binary check: the caller already holds the text.
    while pos < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
        parser.feed(lineno, &bytes[pos..end]);
        lineno += 1;
        pos = end + 1;
    }
    parser.finish().events
}

/// Reads a whole stream (a file, stdin, a child's output) with bounded memory; gzip is
/// decompressed. Errors: the reader's, or `InvalidData` when the input starts like binary data.
pub fn parse_reader<R: BufRead>(reader: R) -> io::Result<Report> {
    let mut parser = Parser::new();
    let (lines, bytes) = scan::scan_maybe_gzip(reader, &mut parser)?;
    let mut report = parser.finish();
    report.lines = lines;
    report.bytes = bytes;
    Ok(report)
}
