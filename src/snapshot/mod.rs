//! PyTorch memory snapshots (`torch.cuda.memory._dump_snapshot`, `_snapshot()`): parsing and analysis.
//!
//! * [`load`] reads a snapshot file (gzip or plain pickle, protocol 2–5, or the 1.13 list-of-segments
//!   form) into typed structs ([`Snapshot`]) without executing anything: the pickle is decoded by a
//!   purpose-built reader (`pickle.rs`) that refuses every opcode that could name or call code.
//! * [`analyse`] turns a snapshot into an [`Analysis`]: totals, the OOM event, categories, the user's
//!   own source lines that hold the memory, fragmentation and a timeline. Plain serde data, no printing.
//! * `report.rs` and `html.rs` render an analysis.
//!
//! The trace entries (`device_traces`) are exposed as plain typed structs ([`TraceEntry`], [`Action`])
//! so that other modules (an allocator simulator) can replay the alloc/free/segment events.
//! Stack frames are interned: a [`StackId`] indexes [`Snapshot::stacks`], whose frame indices index
//! [`Snapshot::frames`]; [`Snapshot::stack`] resolves one.
pub mod analysis;
mod convert;
pub mod html;
pub mod pickle;
pub mod report;
pub mod source;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

pub use analysis::{analyse, Analysis};

/// One stack frame as PyTorch records it. C++ frames usually have `filename` `"??"` or `""` and line 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    pub filename: Arc<str>,
    pub line: i64,
    pub name: Arc<str>,
}

impl Frame {
    /// A Python frame (its file ends in `.py`).
    pub fn is_python(&self) -> bool {
        self.filename.ends_with(".py")
    }
}

/// Index into [`Snapshot::stacks`]; `StackId(0)` is the empty stack (no frames recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize)]
pub struct StackId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    ActiveAllocated,
    /// Freed by the program, but still in use by a stream (`active_pending_free`).
    ActivePendingFree,
    Inactive,
}

/// A block inside a segment.
#[derive(Clone, Debug, Serialize)]
pub struct Block {
    pub address: u64,
    /// Block size (rounded, what the allocator counts).
    pub size: u64,
    /// What the program asked for (0 when the file does not say).
    pub requested_size: u64,
    pub state: BlockState,
    /// Where it was allocated (for allocated blocks; the last owner's stack for some inactive ones).
    pub frames: StackId,
}

impl Block {
    /// Counted in `allocated_bytes` (allocated, or freed but awaiting its stream).
    pub fn is_allocated(&self) -> bool {
        self.state == BlockState::ActiveAllocated
    }
    /// Counted in `active_bytes`.
    pub fn is_active(&self) -> bool {
        self.state != BlockState::Inactive
    }
}

/// A segment: one cudaMalloc (or one mapped range of an expandable segment).
#[derive(Clone, Debug, Serialize)]
pub struct Segment {
    pub device: i64,
    pub address: u64,
    pub total_size: u64,
    pub allocated_size: u64,
    pub active_size: u64,
    pub requested_size: u64,
    /// cudaStream_t as an integer, 0 = default stream.
    pub stream: i64,
    /// `"large"` or `"small"` pool.
    pub segment_type: String,
    /// (0, 0) is the default pool; CUDA graph / MemPool ids otherwise.
    pub segment_pool_id: (i64, i64),
    pub is_expandable: bool,
    /// Stack of the cudaMalloc (2.1+; empty otherwise).
    pub frames: StackId,
    pub blocks: Vec<Block>,
}

/// What a trace entry records (`TraceEntry::Action` in CUDACachingAllocator.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Alloc,
    FreeRequested,
    FreeCompleted,
    SegmentAlloc,
    SegmentFree,
    SegmentMap,
    SegmentUnmap,
    /// `size` = total active bytes when a snapshot was taken.
    Snapshot,
    /// The allocator failed: `size` is the rounded request, `device_free` the free device memory.
    Oom,
    /// 2.8+: user annotation of an allocation.
    Annotate,
    /// An action this version of oomdoc does not know; kept so indices stay aligned.
    Unknown,
}

impl Action {
    fn parse(s: &str) -> Action {
        match s {
            "alloc" => Action::Alloc,
            "free_requested" => Action::FreeRequested,
            "free_completed" => Action::FreeCompleted,
            "segment_alloc" => Action::SegmentAlloc,
            "segment_free" => Action::SegmentFree,
            "segment_map" => Action::SegmentMap,
            "segment_unmap" => Action::SegmentUnmap,
            "snapshot" => Action::Snapshot,
            "oom" => Action::Oom,
            "annotate" => Action::Annotate,
            _ => Action::Unknown,
        }
    }
}

/// One entry of `device_traces[device]`, in recording order.
#[derive(Clone, Debug, Serialize)]
pub struct TraceEntry {
    pub action: Action,
    /// Block or segment address (0 for `oom`, which has `device_free` instead).
    pub addr: u64,
    /// Requested bytes for alloc/free_*, segment bytes for segment_*, rounded request for oom.
    pub size: u64,
    pub stream: i64,
    /// Microseconds since the epoch (2.2+).
    pub time_us: Option<i64>,
    /// Free device memory reported by cudaMemGetInfo (`oom` only).
    pub device_free: Option<u64>,
    pub frames: StackId,
    pub compile_context: Option<Arc<str>>,
    pub user_metadata: Option<Arc<str>>,
}

/// `external_annotations` (2.5+), e.g. `Optimizer.step#AdamW.step` START/END.
#[derive(Clone, Debug, Serialize)]
pub struct Annotation {
    pub stage: String,
    pub name: String,
    pub device: i64,
    pub time_us: i64,
}

/// The file's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotFormat {
    /// `{segments, device_traces, ...}` (2.0+).
    Dict,
    /// 1.13: a bare list of segments whose blocks carry `history`.
    LegacySegmentList,
}

/// A parsed memory snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub format: SnapshotFormat,
    pub segments: Vec<Segment>,
    /// One list per device (index = device), oldest first.
    pub device_traces: Vec<Vec<TraceEntry>>,
    pub external_annotations: Vec<Annotation>,
    /// `allocator_settings` (2.3+) as flat key/value text, e.g. `max_split_size = -1`.
    pub allocator_settings: Vec<(String, String)>,
    /// Frame table.
    pub frames: Vec<Frame>,
    /// Stack table: frame indices, innermost first (PyTorch's order); index 0 is empty.
    pub stacks: Vec<Box<[u32]>>,
}

impl Snapshot {
    /// The frames of a stack, innermost first.
    pub fn stack(&self, id: StackId) -> impl Iterator<Item = &Frame> + '_ {
        self.stacks
            .get(id.0 as usize)
            .map(|s| &s[..])
            .unwrap_or(&[])
            .iter()
            .filter_map(|&f| self.frames.get(f as usize))
    }
    /// All trace entries of all devices.
    pub fn trace_len(&self) -> usize {
        self.device_traces.iter().map(Vec::len).sum()
    }
}

/// Reads a snapshot file: gzip (detected by its magic bytes) or a plain pickle.
/// Errors name the file and, for corrupt pickles, the byte offset (of the uncompressed stream).
pub fn load(path: &Path) -> anyhow::Result<Snapshot> {
    let shown = path.display().to_string();
    let mut file = std::fs::File::open(path)
        .map_err(|e| crate::error::Error::input(format!("{shown}: cannot open: {e}")))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic)
        .map_err(|e| crate::error::Error::input(format!("{shown}: cannot read: {e}")))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    if n == 2 && magic == [0x1f, 0x8b] {
        let buffered = std::io::BufReader::with_capacity(1 << 16, file);
        let gz = flate2::read::MultiGzDecoder::new(head.chain(buffered));
        // A snapshot compresses about 10x (the fixtures: 8-20x).
        parse(gz, &shown, true, size.saturating_mul(10))
    } else {
        // The decoder buffers its input itself.
        parse(head.chain(file), &shown, false, size)
    }
}

/// Parses a snapshot from any reader (uncompressed pickle, or gzip when `gzip` says so: only used
/// to word errors). `name` is used in error messages.
pub fn from_reader<R: Read>(src: R, name: &str, gzip: bool) -> anyhow::Result<Snapshot> {
    parse(src, name, gzip, 0)
}

/// `size_hint`: the expected uncompressed size, to size tables up front (0: unknown).
fn parse<R: Read>(src: R, name: &str, gzip: bool, size_hint: u64) -> anyhow::Result<Snapshot> {
    let decoded = pickle::decode_sized(src, size_hint).map_err(|e| {
        let what = if gzip {
            " of the decompressed data"
        } else {
            ""
        };
        let msg = if e.msg.starts_with("read error") && gzip {
            format!(
                "corrupt gzip data: {}",
                e.msg.trim_start_matches("read error: ")
            )
        } else {
            e.msg
        };
        crate::error::Error::input(format!("{name}: {msg} (at byte {}{what})", e.offset))
    })?;
    convert::snapshot(decoded).map_err(|m| {
        anyhow::Error::new(crate::error::Error::input(format!(
            "{name}: not a PyTorch memory snapshot: {m}"
        )))
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
