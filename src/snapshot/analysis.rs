//! What filled the GPU: totals, the OOM event, categories, the user's source lines, fragmentation,
//! and a timeline, computed from a [`Snapshot`]. Plain serde data; nothing here prints.
//!
//! # The moment analysed
//! Categories and top sites describe one moment: the (last) OOM when the trace has one, otherwise the
//! peak of allocated memory over the trace, otherwise the moment the snapshot was taken. The set of
//! allocations alive at that moment is rebuilt from the snapshot's blocks (exact state at the end)
//! and the trace (each `alloc` paired with the `free_requested` at the same address).
//!
//! # How categories are inferred
//! Each allocation's stack is classified first (the first matching rule wins):
//! * **optimizer**: a Python frame in `torch/optim/`. Inside `_init_group` (where Adam/AdamW/SGD create
//!   `exp_avg`, `exp_avg_sq`, momentum buffers) it is **optimizer_state**; other optimizer-step
//!   allocations are **temporaries** when the trace frees them, optimizer_state when they stay.
//! * **backward**: a C++ frame of the autograd engine (`torch::autograd::Engine`, `AccumulateGrad`) or
//!   Python `backward` in `torch/_tensor.py` / `torch/autograd/`. Allocations under `AccumulateGrad`
//!   are **gradients**; other backward allocations are **gradients** when they outlive the backward
//!   pass that made them (AccumulateGrad usually *steals* the incoming gradient buffer, so a parameter's
//!   `.grad` is allocated by the op's backward kernel), **temporaries** when freed within it.
//! * **parameters**: `nn.Module.to/cuda/_apply/convert`, `load_state_dict`, `torch/nn/parameter.py`,
//!   `torch/nn/init.py`, `reset_parameters`, module `__init__` in `torch/nn/modules`, or
//!   `from_pretrained`/`to` in `transformers/modeling_utils.py`.
//! * **forward**: any other stack with a Python frame. It is an **activation** when it is still alive
//!   when the next backward pass starts (saved for backward), or still alive at the end of the trace;
//!   a **temporary** when freed before that.
//! * **unknown**: no stack recorded. If `external_annotations` mark an `Optimizer.step` window, an
//!   allocation made inside it counts as optimizer_state (kept after the step) or temporaries.
//!
//! "Backward pass" = a run of consecutive `alloc` entries whose stacks classify as backward.
//!
//! # Sites
//! A site is the innermost frame of the user's own code: a `.py` file not under `site-packages`,
//! `dist-packages`, a `torch/` package directory or the Python standard library. The site's kind
//! (eager attention, MLP, ...) is read from the ATen operators (`at::_ops::<op>::call`) beneath it.
use std::collections::HashMap;

use serde::Serialize;

use super::pickle::FxBuild;
use super::{Action, BlockState, Frame, Snapshot, SnapshotFormat, StackId};

/// All sizes are rounded up to this multiple when only the requested size is known
/// (`kMinBlockSize`, CUDACachingAllocator.cpp).
const MIN_BLOCK_SIZE: u64 = 512;
/// A scope that holds at least this share of the memory at the moment is "where it went"
/// (chosen so that a single dominant call site is named; a report convention, not a measurement).
const SCOPE_SHARE: f64 = 0.80;
/// A line is named after its operators (attention, MLP, ...) when they hold at least half of its
/// memory, and each part of a two-part kind (softmax + matmul, linear + activation) at least 10%
/// (report conventions, chosen so that a whole-model call is not named after one of its layers).
const KIND_SHARE: f64 = 0.5;
const MIN_PART: f64 = 0.10;
/// Number of sites reported.
const TOP_SITES: usize = 15;
/// Timeline points kept (each keeps the maximum of its bucket, so peaks survive downsampling).
const TIMELINE_POINTS: usize = 600;
/// Segments listed in the fragmentation detail.
const FRAG_SEGMENTS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Parameters,
    Gradients,
    OptimizerState,
    Activations,
    Temporaries,
    Unknown,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Parameters,
        Category::Gradients,
        Category::OptimizerState,
        Category::Activations,
        Category::Temporaries,
        Category::Unknown,
    ];
    fn idx(self) -> usize {
        self as usize
    }
}

/// Bytes per category at the analysed moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Categories {
    pub parameters: u64,
    pub gradients: u64,
    pub optimizer_state: u64,
    pub activations: u64,
    pub temporaries: u64,
    pub unknown: u64,
}

impl Categories {
    pub fn get(&self, c: Category) -> u64 {
        match c {
            Category::Parameters => self.parameters,
            Category::Gradients => self.gradients,
            Category::OptimizerState => self.optimizer_state,
            Category::Activations => self.activations,
            Category::Temporaries => self.temporaries,
            Category::Unknown => self.unknown,
        }
    }
    fn add(&mut self, c: Category, n: u64) {
        let f = match c {
            Category::Parameters => &mut self.parameters,
            Category::Gradients => &mut self.gradients,
            Category::OptimizerState => &mut self.optimizer_state,
            Category::Activations => &mut self.activations,
            Category::Temporaries => &mut self.temporaries,
            Category::Unknown => &mut self.unknown,
        };
        *f += n;
    }
}

/// Where in a training step an allocation (or the OOM) happened, from its stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Parameters,
    Forward,
    Backward,
    Optimizer,
    Unknown,
}

/// What a source line does, read from the operators beneath it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    /// softmax(QK^T) materialised: keeps an N x N matrix per head.
    EagerAttention,
    /// scaled_dot_product_attention / flash / memory-efficient kernels.
    FusedAttention,
    /// Linear layers with an activation between them.
    Mlp,
    Linear,
    Convolution,
    Normalization,
    Embedding,
    Loss,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MomentKind {
    /// The state at the (last) out-of-memory event.
    Oom,
    /// The peak of allocated memory over the trace.
    Peak,
    /// The state when the snapshot was taken (no trace to go back in).
    Snapshot,
}

#[derive(Clone, Debug, Serialize)]
pub struct Moment {
    pub kind: MomentKind,
    /// Index in the device trace (None for the snapshot state).
    pub trace_index: Option<usize>,
    pub time_us: Option<i64>,
    pub allocated_bytes: u64,
    pub reserved_bytes: u64,
    pub allocations: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Oom {
    /// The OOM trace entry's `size` (the rounded request).
    pub requested_bytes: u64,
    /// The OOM trace entry's `device_free` (cudaMemGetInfo free bytes of the whole device).
    pub device_free_bytes: u64,
    pub time_us: Option<i64>,
    pub device: usize,
    /// How many OOM entries the trace holds (the last is analysed).
    pub count: usize,
    pub phase: Phase,
    /// The user's line that asked for the memory.
    pub site: Option<SourceLine>,
    /// Its text and enclosing names, when the source was found.
    pub site_source: Option<super::source::SourceInfo>,
    /// The largest free block of the segments at the OOM (snapshot state when nothing followed).
    pub largest_free_block_bytes: u64,
    /// Reserved but unallocated bytes at the OOM.
    pub reserved_free_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SourceLine {
    pub file: String,
    pub line: i64,
    pub function: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpBytes {
    pub op: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Site {
    pub file: String,
    pub line: i64,
    pub function: String,
    pub bytes: u64,
    pub allocations: usize,
    /// Share of the allocated bytes at the moment.
    pub share: f64,
    pub category: Category,
    pub kind: Option<SiteKind>,
    /// ATen operators beneath the line, biggest first (empty when no C++ frames were recorded).
    pub ops: Vec<OpBytes>,
    /// The line's text, when the source file was found (`--source`).
    pub code: Option<String>,
    /// Enclosing class/function names from the source (`Block.forward`).
    pub qualname: Option<String>,
}

/// The most specific user frame that holds most of the memory (at least 80%).
#[derive(Clone, Debug, Serialize)]
pub struct Scope {
    /// The call site: the frame through which the memory was allocated.
    pub caller: SourceLine,
    /// The frame that called the caller's function (most of the bytes), if one holds 90% of them.
    pub outer: Option<SourceLine>,
    /// Its class-qualified name from the source.
    pub outer_qualname: Option<String>,
    /// The function(s) it called, with the lines inside them that allocated.
    pub callee_function: Option<String>,
    pub callee_file: Option<String>,
    pub callee_lines: Vec<i64>,
    pub bytes: u64,
    pub share: f64,
    /// From the source, when found: the callee's class-qualified name and the caller's line.
    pub callee_qualname: Option<String>,
    pub caller_source: Option<super::source::SourceInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SegmentFree {
    pub address: u64,
    pub total_size: u64,
    pub segment_type: String,
    pub free_bytes: u64,
    pub largest_free_block_bytes: u64,
    pub free_blocks: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Fragmentation {
    /// reserved - allocated.
    pub reserved_unallocated_bytes: u64,
    /// Inactive blocks inside split segments (PyTorch's `inactive_split_bytes`).
    pub inactive_split_bytes: u64,
    pub inactive_split_blocks: usize,
    pub free_blocks: usize,
    pub largest_free_block_bytes: u64,
    /// Whole segments with nothing in them (`torch.cuda.empty_cache()` would return these).
    pub releasable_bytes: u64,
    /// 1 - largest free block / all free bytes (0 = one contiguous hole, 1 = dust).
    pub fragmentation_ratio: f64,
    /// Segments with the most free bytes.
    pub segments: Vec<SegmentFree>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TimePoint {
    /// time_us since the first entry, or the event index when the trace has no times.
    pub t: i64,
    /// Index of the trace entry.
    pub index: usize,
    pub allocated: u64,
    pub reserved: u64,
    /// Bytes per category in `Category::ALL` order.
    pub by_category: [u64; 6],
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// "us" (microseconds since the first trace entry) or "event" (entry index).
    pub unit: String,
    pub points: Vec<TimePoint>,
    pub peak_allocated_bytes: u64,
    pub peak_t: i64,
    /// time_us of the first trace entry (absolute), when recorded.
    pub start_time_us: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceSummary {
    pub entries: usize,
    pub allocs: usize,
    pub frees: usize,
    pub segment_allocs: usize,
    pub segment_frees: usize,
    pub ooms: usize,
    /// The device whose trace is analysed (the one with the most entries).
    pub device: usize,
    pub has_stacks: bool,
    pub duration_us: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockView {
    /// Offset from the segment start.
    pub offset: u64,
    pub size: u64,
    pub state: BlockState,
    pub category: Option<Category>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SegmentView {
    pub address: u64,
    pub total_size: u64,
    pub segment_type: String,
    pub stream: i64,
    pub blocks: Vec<BlockView>,
}

/// The analysis of one snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub format: SnapshotFormat,
    /// Σ segment total_size.
    pub reserved_bytes: u64,
    /// Σ size of allocated blocks.
    pub allocated_bytes: u64,
    /// Σ size of active blocks (allocated or awaiting a stream).
    pub active_bytes: u64,
    pub requested_bytes: u64,
    /// Number of segments.
    pub segments: usize,
    pub blocks: usize,
    pub oom: Option<Oom>,
    pub moment: Moment,
    pub categories: Categories,
    pub top_sites: Vec<Site>,
    /// For memory whose own line calls into a third-party library (transformers, timm...): the
    /// innermost line inside that library, biggest first.
    pub library_sites: Vec<Site>,
    pub scope: Option<Scope>,
    pub fragmentation: Fragmentation,
    pub timeline: Timeline,
    pub trace: TraceSummary,
    pub allocator_settings: Vec<(String, String)>,
    pub segment_map: Vec<SegmentView>,
}

fn round_block(n: u64) -> u64 {
    n.div_ceil(MIN_BLOCK_SIZE).max(1) * MIN_BLOCK_SIZE
}

/// Is this a frame of the user's own code?
pub fn is_user_frame(f: &Frame) -> bool {
    let p: &str = &f.filename;
    if !p.ends_with(".py") || p.starts_with('<') {
        return false;
    }
    let p = p.replace('\\', "/");
    !(p.contains("site-packages/")
        || p.contains("dist-packages/")
        || p.starts_with("torch/")
        || p.contains("/torch/")
        || p.contains("/lib/python3")
        || p.contains("/lib64/python3"))
}

/// Is this a frame of a third-party Python package other than torch (transformers, timm, ...)?
pub fn is_library_frame(f: &Frame) -> bool {
    let p: &str = &f.filename;
    if !p.ends_with(".py") {
        return false;
    }
    let p = p.replace('\\', "/");
    (p.contains("site-packages/") || p.contains("dist-packages/"))
        && !p.contains("-packages/torch/")
        && !p.contains("-packages/torchvision/")
        && !p.contains("-packages/torchaudio/")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StackClass {
    NoFrames,
    Param,
    OptimState,
    OptimStep,
    Backward { accumulate: bool },
    Forward,
    Other,
}

fn classify_stack(frames: &[&Frame]) -> StackClass {
    if frames.is_empty() {
        return StackClass::NoFrames;
    }
    let mut optim = false;
    let mut optim_state = false;
    let mut backward = false;
    let mut accumulate = false;
    let mut param = false;
    let mut python = false;
    for f in frames {
        let file: &str = &f.filename;
        let name: &str = &f.name;
        if file.ends_with(".py") {
            python = true;
            let file = file.replace('\\', "/");
            if file.contains("torch/optim/") {
                optim = true;
                if name == "_init_group" || name == "_init_state" {
                    optim_state = true;
                }
            } else if (file.ends_with("torch/_tensor.py") && name == "backward")
                || (file.contains("torch/autograd/") && (name == "backward" || name == "grad"))
            {
                backward = true;
            } else if (file.ends_with("torch/nn/modules/module.py")
                && matches!(
                    name,
                    "_apply"
                        | "to"
                        | "cuda"
                        | "convert"
                        | "to_empty"
                        | "load_state_dict"
                        | "_load_from_state_dict"
                ))
                || file.ends_with("torch/nn/parameter.py")
                || file.ends_with("torch/nn/init.py")
                || name == "reset_parameters"
                || (file.contains("torch/nn/modules/") && name == "__init__")
                || (file.ends_with("modeling_utils.py") && (name == "from_pretrained"))
            {
                param = true;
            }
        } else if name.contains("AccumulateGrad") {
            backward = true;
            accumulate = true;
        } else if name.contains("torch::autograd::Engine") {
            backward = true;
        }
    }
    if optim {
        if optim_state {
            StackClass::OptimState
        } else {
            StackClass::OptimStep
        }
    } else if backward {
        StackClass::Backward { accumulate }
    } else if param {
        StackClass::Param
    } else if python {
        StackClass::Forward
    } else {
        StackClass::Other
    }
}

fn phase_of(c: StackClass) -> Phase {
    match c {
        StackClass::Param => Phase::Parameters,
        StackClass::Forward => Phase::Forward,
        StackClass::Backward { .. } => Phase::Backward,
        StackClass::OptimState | StackClass::OptimStep => Phase::Optimizer,
        StackClass::NoFrames | StackClass::Other => Phase::Unknown,
    }
}

/// The ATen operator called closest to Python in a stack (`at::_ops::<op>::call`), normalised.
fn op_of(frames: &[&Frame]) -> Option<String> {
    let mut found = None;
    for f in frames {
        if f.is_python() {
            if found.is_some() {
                break;
            }
            continue;
        }
        if let Some(rest) = f.name.strip_prefix("at::_ops::") {
            if let Some(op) = rest.split("::").next() {
                if rest[op.len()..].starts_with("::call") {
                    found = Some(normalise_op(op));
                }
            }
        }
    }
    found
}

fn normalise_op(op: &str) -> String {
    // Strip overload names such as softmax_int, add_Tensor, mul_Scalar, sum_dim_IntList.
    let mut s = op.to_string();
    for suffix in [
        "_int",
        "_Tensor",
        "_Scalar",
        "_dim_IntList",
        "_self",
        "_out",
        "_dtype_layout",
    ] {
        if let Some(t) = s.strip_suffix(suffix) {
            s = t.to_string();
        }
    }
    s.trim_start_matches('_').to_string()
}

/// A line's kind, when the operators that define it hold most of its memory (`KIND_SHARE`).
/// `total` is the line's bytes (allocations without a recorded operator count against every kind).
fn site_kind(ops: &[OpBytes], total: u64) -> Option<SiteKind> {
    if ops.is_empty() || total == 0 {
        return None;
    }
    let share = |names: &[&str]| -> f64 {
        let b: u64 = ops
            .iter()
            .filter(|o| names.iter().any(|n| o.op.contains(n)))
            .map(|o| o.bytes)
            .sum();
        b as f64 / total as f64
    };
    const FUSED: &[&str] = &[
        "scaled_dot_product",
        "flash_attention",
        "efficient_attention",
        "cudnn_attention",
    ];
    const SOFTMAX: &[&str] = &["softmax"];
    const MATMUL: &[&str] = &["matmul", "bmm", "baddbmm", "clone", "einsum"];
    const LINEAR: &[&str] = &["linear", "addmm", "mm"];
    const ACT: &[&str] = &["gelu", "relu", "silu", "swish", "tanh"];
    let both = |a: &[&str], b: &[&str]| -> f64 {
        let (x, y) = (share(a), share(b));
        if x >= MIN_PART && y >= MIN_PART {
            // Ops matching both lists (e.g. "mm" in "addmm") are counted once.
            let all: Vec<&str> = a.iter().chain(b).copied().collect();
            share(&all)
        } else {
            0.0
        }
    };
    let candidates = [
        (SiteKind::FusedAttention, share(FUSED)),
        (SiteKind::EagerAttention, both(SOFTMAX, MATMUL)),
        (SiteKind::Mlp, both(LINEAR, ACT)),
        (SiteKind::Convolution, share(&["convolution", "conv"])),
        (SiteKind::Embedding, share(&["embedding"])),
        (
            SiteKind::Loss,
            share(&["cross_entropy", "nll_loss", "mse_loss", "l1_loss"]),
        ),
        (
            SiteKind::Linear,
            share(&["linear", "addmm", "matmul", "bmm"]),
        ),
        (
            SiteKind::Normalization,
            share(&["layer_norm", "batch_norm", "group_norm", "rms_norm"]),
        ),
    ];
    Some(
        candidates
            .iter()
            .find(|(_, s)| *s >= KIND_SHARE)
            .map(|(k, _)| *k)
            .unwrap_or(SiteKind::Other),
    )
}

/// Per-stack facts, computed once per distinct stack.
#[derive(Clone)]
struct StackInfo {
    class: StackClass,
    /// Index into snapshot.frames of the innermost user frame.
    site: Option<u32>,
    /// The innermost third-party (not torch, not stdlib) frame inside the user frame.
    lib_site: Option<u32>,
    op: Option<String>,
}

struct Stacks<'a> {
    snap: &'a Snapshot,
    cache: Vec<Option<StackInfo>>,
}

impl<'a> Stacks<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        Stacks {
            snap,
            cache: vec![None; snap.stacks.len()],
        }
    }
    fn info(&mut self, id: StackId) -> &StackInfo {
        let i = id.0 as usize;
        if i >= self.cache.len() {
            self.cache.resize(i + 1, None);
        }
        if self.cache[i].is_none() {
            let ids: &[u32] = self.snap.stacks.get(i).map(|s| &s[..]).unwrap_or(&[]);
            let frames: Vec<&Frame> = ids
                .iter()
                .filter_map(|&f| self.snap.frames.get(f as usize))
                .collect();
            let site_pos = ids
                .iter()
                .position(|&f| self.snap.frames.get(f as usize).is_some_and(is_user_frame));
            let site = site_pos.map(|p| ids[p]);
            let lib_site = ids[..site_pos.unwrap_or(ids.len())]
                .iter()
                .copied()
                .find(|&f| {
                    self.snap
                        .frames
                        .get(f as usize)
                        .is_some_and(is_library_frame)
                });
            self.cache[i] = Some(StackInfo {
                class: classify_stack(&frames),
                site,
                lib_site,
                op: op_of(&frames),
            });
        }
        self.cache[i].as_ref().expect("filled above")
    }
}

/// One allocation seen in the trace or alive at the end.
#[derive(Clone, Debug)]
struct Alloc {
    /// Trace index of the alloc entry (None: made before the trace starts).
    at: Option<usize>,
    /// Trace index of its free_requested (None: alive at the end).
    free: Option<usize>,
    size: u64,
    stack: StackId,
    /// Time of the alloc (for annotation windows).
    time_us: Option<i64>,
    /// Address (to match end-state blocks).
    addr: u64,
}

/// Analyses a snapshot (see the module docs for what each number means).
pub fn analyse(snap: &Snapshot) -> Analysis {
    let mut stacks = Stacks::new(snap);

    // Totals from the segments.
    let mut reserved = 0u64;
    let mut allocated = 0u64;
    let mut active = 0u64;
    let mut requested = 0u64;
    let mut nblocks = 0usize;
    for s in &snap.segments {
        reserved += s.total_size;
        for b in &s.blocks {
            nblocks += 1;
            if b.is_allocated() {
                allocated += b.size;
            }
            if b.is_active() {
                active += b.size;
                requested += b.requested_size;
            }
        }
    }

    // The device trace analysed: the longest one.
    let (device, trace) = snap
        .device_traces
        .iter()
        .enumerate()
        .max_by_key(|(_, t)| t.len())
        .map(|(d, t)| (d, &t[..]))
        .unwrap_or((0, &[]));

    let mut summary = TraceSummary {
        entries: trace.len(),
        device,
        ..Default::default()
    };
    for e in trace {
        match e.action {
            Action::Alloc => summary.allocs += 1,
            Action::FreeRequested => summary.frees += 1,
            Action::SegmentAlloc | Action::SegmentMap => summary.segment_allocs += 1,
            Action::SegmentFree | Action::SegmentUnmap => summary.segment_frees += 1,
            Action::Oom => summary.ooms += 1,
            _ => {}
        }
        if e.frames.0 != 0 {
            summary.has_stacks = true;
        }
    }
    let t0 = trace.iter().find_map(|e| e.time_us);
    let t_last = trace.iter().rev().find_map(|e| e.time_us);
    if let (Some(a), Some(b)) = (t0, t_last) {
        summary.duration_us = Some(b - a);
    }

    // End-state allocated blocks by address (device of the trace only when several devices exist).
    let multi_device = snap
        .segments
        .iter()
        .any(|s| s.device != snap.segments[0].device);
    let mut end_blocks: HashMap<u64, (u64, StackId), FxBuild> = HashMap::default();
    for s in &snap.segments {
        if multi_device && s.device != device as i64 {
            continue;
        }
        for b in &s.blocks {
            if b.is_allocated() {
                end_blocks.insert(b.address, (b.size, b.frames));
            }
        }
    }

    // Pair allocs and frees.
    let mut allocs: Vec<Alloc> = Vec::with_capacity(summary.allocs + end_blocks.len());
    let mut open: HashMap<u64, usize, FxBuild> = HashMap::default();
    for (i, e) in trace.iter().enumerate() {
        match e.action {
            Action::Alloc => {
                if let Some(prev) = open.insert(e.addr, allocs.len()) {
                    // Two allocs at one address without a free between them: the trace lost the
                    // free; close the older one here.
                    allocs[prev].free = Some(i);
                }
                allocs.push(Alloc {
                    at: Some(i),
                    free: None,
                    size: round_block(e.size),
                    stack: e.frames,
                    time_us: e.time_us,
                    addr: e.addr,
                });
            }
            Action::FreeRequested => match open.remove(&e.addr) {
                Some(k) => allocs[k].free = Some(i),
                None => allocs.push(Alloc {
                    at: None,
                    free: Some(i),
                    size: round_block(e.size),
                    stack: e.frames,
                    time_us: None,
                    addr: e.addr,
                }),
            },
            _ => {}
        }
    }
    // Allocations alive at the end take the block's exact size and stack; blocks with no alloc in the
    // trace were allocated before it started.
    let mut matched: HashMap<u64, (), FxBuild> = HashMap::default();
    for (&addr, &k) in &open {
        if let Some(&(size, st)) = end_blocks.get(&addr) {
            allocs[k].size = size;
            if allocs[k].stack.0 == 0 {
                allocs[k].stack = st;
            }
            matched.insert(addr, ());
        }
    }
    let mut pre: Vec<(u64, u64, StackId)> = end_blocks
        .iter()
        .filter(|(a, _)| !matched.contains_key(a))
        .map(|(&a, &(s, st))| (a, s, st))
        .collect();
    pre.sort_unstable_by_key(|p| p.0);
    for (addr, size, stack) in pre {
        allocs.push(Alloc {
            at: None,
            free: None,
            size,
            stack,
            time_us: None,
            addr,
        });
    }
    // Allocations the trace says are alive at the end but the segments do not hold (e.g. a trace
    // of another device) are closed at the end so the timeline ends at the real state.
    let end_index = trace.len();
    for (&addr, &k) in &open {
        if !end_blocks.contains_key(&addr) {
            allocs[k].free = Some(end_index);
        }
    }

    // Backward runs (for lifetimes): consecutive alloc entries whose stacks are backward.
    let mut alloc_class: Vec<StackClass> = Vec::with_capacity(allocs.len());
    for a in &allocs {
        alloc_class.push(stacks.info(a.stack).class);
    }
    let mut runs: Vec<(usize, usize)> = Vec::new(); // (first, last) trace index
    {
        let mut order: Vec<usize> = (0..allocs.len())
            .filter(|&k| allocs[k].at.is_some())
            .collect();
        order.sort_unstable_by_key(|&k| allocs[k].at);
        let mut cur: Option<(usize, usize)> = None;
        for k in order {
            let at = allocs[k].at.unwrap_or(0);
            if matches!(alloc_class[k], StackClass::Backward { .. }) {
                cur = Some(match cur {
                    Some((s, _)) => (s, at),
                    None => (at, at),
                });
            } else if matches!(alloc_class[k], StackClass::NoFrames) {
                // No evidence either way; keep the run open.
            } else if let Some(r) = cur.take() {
                runs.push(r);
            }
        }
        if let Some((s, e)) = cur {
            // Still in backward at the end of the trace: its end is unknown.
            runs.push((s, e.max(usize::MAX / 2)));
        }
    }
    // Optimizer.step windows from annotations.
    let mut windows: Vec<(i64, i64)> = Vec::new();
    {
        let mut start: Option<i64> = None;
        for a in &snap.external_annotations {
            if a.name.starts_with("Optimizer.step") {
                if a.stage == "START" {
                    start = Some(a.time_us);
                } else if let (Some(s), "END") = (start.take(), a.stage.as_str()) {
                    windows.push((s, a.time_us));
                }
            }
        }
    }
    let time_of = |i: usize| trace.get(i).and_then(|e| e.time_us);

    let categorise = |k: usize, a: &Alloc| -> Category {
        match alloc_class[k] {
            StackClass::Param => Category::Parameters,
            StackClass::OptimState => Category::OptimizerState,
            StackClass::OptimStep => match (a.at, a.free) {
                // Made and freed inside the trace: step work (foreach temporaries).
                (Some(_), Some(_)) => Category::Temporaries,
                _ => Category::OptimizerState,
            },
            StackClass::Backward { accumulate } => {
                if accumulate {
                    return Category::Gradients;
                }
                let Some(at) = a.at else {
                    return Category::Gradients;
                };
                let n = runs.partition_point(|r| r.0 <= at);
                let run = n.checked_sub(1).map(|j| &runs[j]).filter(|r| at <= r.1);
                match (run, a.free) {
                    (Some(r), Some(f)) if f <= r.1 => Category::Temporaries,
                    (Some(r), None) if r.1 >= usize::MAX / 2 => Category::Temporaries,
                    _ => Category::Gradients,
                }
            }
            StackClass::Forward | StackClass::Other => {
                let Some(at) = a.at else {
                    return Category::Activations;
                };
                match a.free {
                    None => Category::Activations,
                    Some(f) => {
                        let n = runs.partition_point(|r| r.0 <= at);
                        let next_bwd = runs.get(n).map(|r| r.0);
                        match next_bwd {
                            Some(b) if f > b => Category::Activations,
                            _ => Category::Temporaries,
                        }
                    }
                }
            }
            StackClass::NoFrames => {
                let t = a.time_us.or_else(|| a.at.and_then(time_of));
                if let Some(t) = t {
                    if let Some(w) = windows.iter().find(|w| w.0 <= t && t <= w.1) {
                        let freed_in = a.free.and_then(time_of).is_some_and(|ft| ft <= w.1);
                        return if freed_in {
                            Category::Temporaries
                        } else {
                            Category::OptimizerState
                        };
                    }
                }
                Category::Unknown
            }
        }
    };
    let cats: Vec<Category> = allocs
        .iter()
        .enumerate()
        .map(|(k, a)| categorise(k, a))
        .collect();

    // Timeline sweep: allocated per category after each event.
    // Each trace index starts at most one allocation (its alloc entry) and ends at most one (its
    // free entry, or an alloc that replaced a lost free).
    const NONE: u32 = u32::MAX;
    let mut start_of: Vec<u32> = vec![NONE; trace.len()];
    let mut end_of: Vec<u32> = vec![NONE; trace.len()];
    let mut cur = [0u64; 6];
    for (k, a) in allocs.iter().enumerate() {
        match a.at {
            Some(i) => start_of[i] = k as u32,
            None => cur[cats[k].idx()] += a.size,
        }
        if let Some(f) = a.free {
            if f < end_of.len() {
                end_of[f] = k as u32;
            }
        }
    }
    // Reserved over time: walk back from the exact end.
    let mut reserved_after = vec![0u64; trace.len()];
    {
        let mut r = reserved as i128;
        for (i, e) in trace.iter().enumerate().rev() {
            reserved_after[i] = r.max(0) as u64;
            match e.action {
                Action::SegmentAlloc | Action::SegmentMap => r -= e.size as i128,
                Action::SegmentFree | Action::SegmentUnmap => r += e.size as i128,
                _ => {}
            }
        }
    }
    let unit_us = trace.iter().all(|e| e.time_us.is_some()) && !trace.is_empty();
    let t_of = |i: usize| -> i64 {
        if unit_us {
            trace[i].time_us.unwrap_or(0) - t0.unwrap_or(0)
        } else {
            i as i64
        }
    };
    let bucket = trace.len().div_ceil(TIMELINE_POINTS).max(1);
    let mut points: Vec<TimePoint> = Vec::new();
    let mut best: Option<(usize, u64, [u64; 6])> = None;
    let mut peak = (0u64, 0usize);
    for i in 0..trace.len() {
        if start_of[i] != NONE {
            let k = start_of[i] as usize;
            cur[cats[k].idx()] += allocs[k].size;
        }
        if end_of[i] != NONE {
            let k = end_of[i] as usize;
            let c = cats[k].idx();
            cur[c] = cur[c].saturating_sub(allocs[k].size);
        }
        let total: u64 = cur.iter().sum();
        if total > peak.0 || i == 0 {
            peak = (total, i);
        }
        if best.map_or(true, |b| total >= b.1) {
            best = Some((i, total, cur));
        }
        if (i + 1) % bucket == 0 || i + 1 == trace.len() {
            if let Some((j, tot, by)) = best.take() {
                points.push(TimePoint {
                    t: t_of(j),
                    index: j,
                    allocated: tot,
                    reserved: reserved_after[j],
                    by_category: by,
                });
            }
        }
    }

    // The moment.
    let oom_idx = trace.iter().rposition(|e| e.action == Action::Oom);
    let (kind, index) = match oom_idx {
        Some(i) => (MomentKind::Oom, Some(i)),
        None if !trace.is_empty() && peak.0 > allocated => (MomentKind::Peak, Some(peak.1)),
        None => (MomentKind::Snapshot, None),
    };
    let alive = |a: &Alloc| -> bool {
        match index {
            None => a.free.is_none(),
            Some(t) => a.at.map_or(true, |i| i <= t) && a.free.map_or(true, |f| f > t),
        }
    };
    let live: Vec<usize> = (0..allocs.len()).filter(|&k| alive(&allocs[k])).collect();
    let moment_alloc: u64 = match index {
        None => allocated,
        Some(_) => live.iter().map(|&k| allocs[k].size).sum(),
    };
    let moment = Moment {
        kind,
        trace_index: index,
        time_us: index.and_then(time_of),
        allocated_bytes: moment_alloc,
        reserved_bytes: index.map(|i| reserved_after[i]).unwrap_or(reserved),
        allocations: live.len(),
    };

    // Categories and sites at the moment.
    let mut categories = Categories::default();
    let mut site_acc: HashMap<Option<u32>, SiteAcc, FxBuild> = HashMap::default();
    let mut lib_acc: HashMap<Option<u32>, SiteAcc, FxBuild> = HashMap::default();
    for &k in &live {
        let a = &allocs[k];
        categories.add(cats[k], a.size);
        let info = stacks.info(a.stack).clone();
        site_acc
            .entry(info.site)
            .or_default()
            .add(a.size, cats[k], &info.op);
        if info.lib_site.is_some() {
            lib_acc
                .entry(info.lib_site)
                .or_default()
                .add(a.size, cats[k], &info.op);
        }
    }
    let sites = build_sites(snap, site_acc, moment_alloc);
    let library_sites = build_sites(snap, lib_acc, moment_alloc);

    let scope = find_scope(
        snap,
        &live.iter().map(|&k| &allocs[k]).collect::<Vec<_>>(),
        moment_alloc,
    );

    // Fragmentation and the segment map (end state), with categories of allocated blocks.
    let cat_by_addr: HashMap<u64, Category, FxBuild> = allocs
        .iter()
        .zip(&cats)
        .filter(|(a, _)| a.free.is_none())
        .map(|(a, &c)| (a.addr, c))
        .collect();
    let mut frag = Fragmentation {
        reserved_unallocated_bytes: reserved.saturating_sub(allocated),
        ..Default::default()
    };
    let mut seg_free: Vec<SegmentFree> = Vec::new();
    let mut segment_map = Vec::with_capacity(snap.segments.len());
    let mut total_free = 0u64;
    for s in &snap.segments {
        let split = s.blocks.len() > 1;
        let mut free = 0u64;
        let mut largest = 0u64;
        let mut nfree = 0usize;
        let mut views = Vec::with_capacity(s.blocks.len());
        for b in &s.blocks {
            if b.state == BlockState::Inactive {
                free += b.size;
                largest = largest.max(b.size);
                nfree += 1;
                if split {
                    frag.inactive_split_bytes += b.size;
                    frag.inactive_split_blocks += 1;
                }
            }
            views.push(BlockView {
                offset: b.address.saturating_sub(s.address),
                size: b.size,
                state: b.state,
                category: if b.is_allocated() {
                    cat_by_addr.get(&b.address).copied()
                } else {
                    None
                },
            });
        }
        if !s.blocks.iter().any(|b| b.is_active()) {
            frag.releasable_bytes += s.total_size;
        }
        total_free += free;
        frag.free_blocks += nfree;
        frag.largest_free_block_bytes = frag.largest_free_block_bytes.max(largest);
        if free > 0 {
            seg_free.push(SegmentFree {
                address: s.address,
                total_size: s.total_size,
                segment_type: s.segment_type.clone(),
                free_bytes: free,
                largest_free_block_bytes: largest,
                free_blocks: nfree,
            });
        }
        segment_map.push(SegmentView {
            address: s.address,
            total_size: s.total_size,
            segment_type: s.segment_type.clone(),
            stream: s.stream,
            blocks: views,
        });
    }
    segment_map.sort_by_key(|s| s.address);
    frag.fragmentation_ratio = if total_free > 0 {
        1.0 - frag.largest_free_block_bytes as f64 / total_free as f64
    } else {
        0.0
    };
    seg_free.sort_by(|a, b| {
        b.free_bytes
            .cmp(&a.free_bytes)
            .then(a.address.cmp(&b.address))
    });
    seg_free.truncate(FRAG_SEGMENTS);
    frag.segments = seg_free;

    let oom = oom_idx.map(|i| {
        let e = &trace[i];
        let info = stacks.info(e.frames).clone();
        let nothing_after = trace[i + 1..].iter().all(|e| {
            !matches!(
                e.action,
                Action::Alloc | Action::FreeRequested | Action::SegmentAlloc | Action::SegmentFree
            )
        });
        Oom {
            requested_bytes: e.size,
            device_free_bytes: e.device_free.unwrap_or(0),
            time_us: e.time_us,
            device,
            count: summary.ooms,
            phase: phase_of(info.class),
            site: info
                .site
                .and_then(|f| snap.frames.get(f as usize))
                .map(|f| SourceLine {
                    file: f.filename.to_string(),
                    line: f.line,
                    function: f.name.to_string(),
                }),
            site_source: None,
            largest_free_block_bytes: if nothing_after {
                frag.largest_free_block_bytes
            } else {
                0
            },
            reserved_free_bytes: reserved_after[i].saturating_sub(moment_alloc),
        }
    });

    let timeline = Timeline {
        unit: if unit_us { "us" } else { "event" }.to_string(),
        peak_allocated_bytes: peak.0,
        peak_t: if trace.is_empty() { 0 } else { t_of(peak.1) },
        start_time_us: t0,
        points,
    };

    Analysis {
        format: snap.format,
        reserved_bytes: reserved,
        allocated_bytes: allocated,
        active_bytes: active,
        requested_bytes: requested,
        segments: snap.segments.len(),
        blocks: nblocks,
        oom,
        moment,
        categories,
        top_sites: sites,
        library_sites,
        scope,
        fragmentation: frag,
        timeline,
        trace: summary,
        allocator_settings: snap.allocator_settings.clone(),
        segment_map,
    }
}

#[derive(Default)]
struct SiteAcc {
    bytes: u64,
    count: usize,
    cats: [u64; 6],
    ops: HashMap<String, u64>,
}

impl SiteAcc {
    fn add(&mut self, size: u64, cat: Category, op: &Option<String>) {
        self.bytes += size;
        self.count += 1;
        self.cats[cat.idx()] += size;
        if let Some(op) = op {
            *self.ops.entry(op.clone()).or_default() += size;
        }
    }
}

/// Sites from per-frame accumulators, biggest first (frame None = no such frame: left out).
fn build_sites(
    snap: &Snapshot,
    acc: HashMap<Option<u32>, SiteAcc, FxBuild>,
    total: u64,
) -> Vec<Site> {
    let denom = total.max(1) as f64;
    let mut sites: Vec<Site> = acc
        .into_iter()
        .filter_map(|(site, acc)| {
            let f = snap.frames.get(site? as usize)?;
            let mut ops: Vec<OpBytes> = acc
                .ops
                .into_iter()
                .map(|(op, bytes)| OpBytes { op, bytes })
                .collect();
            ops.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.op.cmp(&b.op)));
            let cat = Category::ALL
                .into_iter()
                .max_by_key(|c| (acc.cats[c.idx()], std::cmp::Reverse(c.idx())))
                .unwrap_or(Category::Unknown);
            let kind = site_kind(&ops, acc.bytes);
            ops.truncate(5);
            Some(Site {
                file: f.filename.to_string(),
                line: f.line,
                function: f.name.to_string(),
                bytes: acc.bytes,
                allocations: acc.count,
                share: acc.bytes as f64 / denom,
                category: cat,
                kind,
                ops,
                code: None,
                qualname: None,
            })
        })
        .collect();
    sites.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(a.file.cmp(&b.file))
            .then(a.line.cmp(&b.line))
    });
    sites.truncate(TOP_SITES);
    sites
}

/// The most specific user frame holding at least `SCOPE_SHARE` of the moment's memory: among user
/// frames (file, line, function) ranked by the bytes of allocations whose stack passes through them,
/// the one with the fewest bytes above the threshold (ties: the one deepest in the stacks).
fn find_scope(snap: &Snapshot, live: &[&Alloc], total: u64) -> Option<Scope> {
    if total == 0 {
        return None;
    }
    // Bytes per distinct stack first (many allocations share a stack).
    let mut per_stack: HashMap<StackId, u64, FxBuild> = HashMap::default();
    for a in live {
        *per_stack.entry(a.stack).or_default() += a.size;
    }
    // For each user frame: inclusive bytes, summed depth-from-outermost (for ties).
    let mut incl: HashMap<u32, (u64, u64), FxBuild> = HashMap::default();
    for (&st, &bytes) in &per_stack {
        let ids = snap
            .stacks
            .get(st.0 as usize)
            .map(|s| &s[..])
            .unwrap_or(&[]);
        let users: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&f| snap.frames.get(f as usize).is_some_and(is_user_frame))
            .collect();
        let n = users.len() as u64;
        let mut seen: Vec<u32> = Vec::with_capacity(users.len());
        for (pos, &f) in users.iter().enumerate() {
            if seen.contains(&f) {
                continue;
            }
            seen.push(f);
            let depth = n - pos as u64; // outermost = 1
            let e = incl.entry(f).or_default();
            e.0 += bytes;
            e.1 = e.1.max(depth);
        }
    }
    let threshold = (total as f64 * SCOPE_SHARE).ceil() as u64;
    let (&frame, &(bytes, _)) = incl
        .iter()
        .filter(|(_, v)| v.0 >= threshold)
        .min_by(|a, b| {
            a.1 .0
                .cmp(&b.1 .0)
                .then(b.1 .1.cmp(&a.1 .1))
                .then(a.0.cmp(b.0))
        })?;
    let f = snap.frames.get(frame as usize)?;
    // The callee: the user frames directly inside `frame` in those stacks.
    let mut callee: HashMap<(String, String), (u64, Vec<i64>)> = HashMap::new();
    let mut outer: HashMap<u32, u64, FxBuild> = HashMap::default();
    for (&st, &b) in &per_stack {
        let ids = snap
            .stacks
            .get(st.0 as usize)
            .map(|s| &s[..])
            .unwrap_or(&[]);
        let users: Vec<&Frame> = ids
            .iter()
            .filter_map(|&i| snap.frames.get(i as usize))
            .filter(|fr| is_user_frame(fr))
            .collect();
        let user_ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| snap.frames.get(i as usize).is_some_and(is_user_frame))
            .collect();
        let Some(pos) = user_ids.iter().position(|&i| i == frame) else {
            continue;
        };
        if let Some(&o) = user_ids.get(pos + 1) {
            *outer.entry(o).or_default() += b;
        }
        if pos == 0 {
            continue;
        }
        let inner = users[pos - 1];
        let e = callee
            .entry((inner.filename.to_string(), inner.name.to_string()))
            .or_default();
        e.0 += b;
        if !e.1.contains(&inner.line) {
            e.1.push(inner.line);
        }
    }
    let best = callee
        .into_iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(&a.0)));
    let (callee_file, callee_function, callee_lines) = match best {
        Some(((file, func), (cb, mut lines))) if cb * 10 >= bytes * 9 => {
            lines.sort_unstable();
            (Some(file), Some(func), lines)
        }
        _ => (None, None, Vec::new()),
    };
    let outer = outer
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .filter(|o| o.1 * 10 >= bytes * 9)
        .and_then(|o| snap.frames.get(o.0 as usize))
        .map(|o| SourceLine {
            file: o.filename.to_string(),
            line: o.line,
            function: o.name.to_string(),
        });
    Some(Scope {
        caller: SourceLine {
            file: f.filename.to_string(),
            line: f.line,
            function: f.name.to_string(),
        },
        outer,
        outer_qualname: None,
        callee_function,
        callee_file,
        callee_lines,
        bytes,
        share: bytes as f64 / total as f64,
        callee_qualname: None,
        caller_source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fr(file: &str, line: i64, name: &str) -> Frame {
        Frame {
            filename: Arc::from(file),
            line,
            name: Arc::from(name),
        }
    }

    #[test]
    fn user_frames() {
        assert!(is_user_frame(&fr("/work/x/model.py", 3, "forward")));
        assert!(!is_user_frame(&fr(
            "/opt/v/lib/python3.12/site-packages/torch/nn/modules/module.py",
            1,
            "_call_impl"
        )));
        assert!(!is_user_frame(&fr("/usr/lib/python3.11/runpy.py", 1, "x")));
        assert!(!is_user_frame(&fr("??", 0, "at::native::empty")));
        assert!(!is_user_frame(&fr(
            "/src/pytorch/torch/optim/adam.py",
            1,
            "step"
        )));
    }

    #[test]
    fn classifies_stacks() {
        let adam = fr("/v/site-packages/torch/optim/adam.py", 1, "_init_group");
        assert_eq!(classify_stack(&[&adam]), StackClass::OptimState);
        let eng = fr("??", 0, "torch::autograd::Engine::thread_main(...)");
        assert_eq!(
            classify_stack(&[&eng]),
            StackClass::Backward { accumulate: false }
        );
        let to = fr("/v/site-packages/torch/nn/modules/module.py", 1, "convert");
        assert_eq!(classify_stack(&[&to]), StackClass::Param);
        let user = fr("/w/m.py", 3, "forward");
        assert_eq!(classify_stack(&[&user]), StackClass::Forward);
        assert_eq!(classify_stack(&[]), StackClass::NoFrames);
    }

    #[test]
    fn ops_and_kinds() {
        let f = fr(
            "??",
            0,
            "at::_ops::softmax_int::call(at::Tensor const&, long)",
        );
        let p = fr("/w/m.py", 42, "forward");
        assert_eq!(op_of(&[&f, &p]).as_deref(), Some("softmax"));
        let ops = |v: &[&str]| -> Vec<OpBytes> {
            v.iter()
                .map(|o| OpBytes {
                    op: o.to_string(),
                    bytes: 1,
                })
                .collect()
        };
        assert_eq!(
            site_kind(&ops(&["softmax", "clone", "mul"]), 3),
            Some(SiteKind::EagerAttention)
        );
        assert_eq!(site_kind(&ops(&["linear", "gelu"]), 2), Some(SiteKind::Mlp));
        assert_eq!(
            site_kind(&ops(&["scaled_dot_product_attention"]), 1),
            Some(SiteKind::FusedAttention)
        );
        // One attention op among many layers does not make a whole-model line "attention".
        assert_eq!(
            site_kind(
                &ops(&[
                    "scaled_dot_product_attention",
                    "add",
                    "mul",
                    "layer_norm",
                    "tanh"
                ]),
                5
            ),
            Some(SiteKind::Other)
        );
        assert_eq!(site_kind(&[], 0), None);
    }
}
