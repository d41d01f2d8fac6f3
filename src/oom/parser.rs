//! The line-level state machine: reads candidate lines (those the prefilter in `scan` passes, plus
//! the continuation lines it asks for) and builds one event per failure.
//!
//! Grouping rules ("one event per failure"):
//! * PyTorch allocator messages: one per message; a message wrapped over several lines is joined
//!   first; the same message repeated nearby (re-raised, logged twice) is one event.
//! * TensorFlow / XLA: the BFC allocator's `ran out of memory`, its dump (every dump line carries
//!   `bfc_allocator.cc`), `OOM when allocating tensor`, `RESOURCE_EXHAUSTED`, the `N root error(s)`
//!   exception and its re-raise are one event; a second `ran out of memory` starts the next.
//! * Kernel OOM killer: `invoked oom-killer` starts an event; the `oom-kill:` constraint line, the
//!   `Killed process` line and the `oom_reaper` line of the same pid join it.
//! * DataLoader, torchrun, NCCL, cuBLAS/cuDNN, `CUDA error`: nearby lines about the same worker,
//!   pid or status are one event.
use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::analysis;
use super::clean::{clean_line, collapse_ws, rank_of, strip_prefix};
use super::event::{OomEvent, OomKind, OtherProcess, Report};
use super::size::{parse_value, SizeError};
use super::versions::{v, Versions};

/// Most events kept per input; later ones are counted (bounded memory on pathological logs).
pub const MAX_EVENTS: usize = 10_000;
/// Longest message text kept in `OomEvent::message`, in characters.
const MESSAGE_CHARS: usize = 300;
/// Lines a wrapped PyTorch message may continue over (the longest real message is ~700
/// characters; hard-wrapped at 80 columns that is 9 lines).
const WRAP_LINES: u8 = 10;
/// Most characters collected for one wrapped message.
const WRAP_CHARS: usize = 8192;

/// A printed size: number and unit, as a regex fragment with two groups.
const S: &str = r"([0-9][0-9,]*(?:\.[0-9]+)?) ?(bytes|[KMGTPE]i?B)";

fn re(pattern: &str) -> Regex {
    Regex::new(&pattern.replace("{S}", S)).expect("built-in regex")
}

macro_rules! regex {
    ($name:ident, $pat:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| re($pat));
    };
}

// PyTorch caching allocator (CUDA / HIP / XPU), all versions: oom-formats.md §2, §3.
regex!(PT_TRIGGER, r"(CUDA|HIP|XPU) out of memory(?:[.,]|$)");
regex!(
    PT_CLASS,
    r"(torch\.cuda\.OutOfMemoryError|torch\.OutOfMemoryError|RuntimeError|OutOfMemoryError): *(?:CUDA|HIP|XPU) out of memory"
);
regex!(PT_TRIED, r"out of memory\. ?Tried to allocate {S}");
regex!(PT_1EB, r"Tried to allocate more than 1EB memory");
regex!(PT_PREEMPT, r"preemptively rejected.*?Requested size: ?{S}");
regex!(
    PT_NEW_GPU,
    r"GPU ?(?:([0-9]+) |([\x00-\x1f]) )?has a total capac(i?)ty of {S}"
);
regex!(PT_NEW_FREE, r"of which {S} is free");
regex!(PT_THIS_PROC, r"this process has {S} memory in use");
regex!(PT_PROC, r"Process ([0-9]+) has {S} memory in use");
regex!(PT_ALLOWED, r"{S} allowed;");
regex!(
    PT_NEW_ALLOC,
    r"Of the allocated memory {S} is allocated by PyTorch"
);
regex!(PT_PRIVATE, r"with {S} allocated in private pools");
regex!(
    PT_UNALLOC,
    r"and {S} is reserved by PyTorch but unallocated"
);
regex!(PT_OLD_GPU, r"\(GPU ([0-9]+);");
regex!(PT_OLD_TOTAL, r"{S} total capacity");
regex!(PT_OLD_ALLOC, r"{S} already allocated");
regex!(PT_OLD_FREE, r"{S} free;");
regex!(PT_OLD_RESERVED, r"{S} reserved in total by PyTorch");
// <= 1.3: `{cached - allocated} cached)`; some 1.x builds add `; {inactive} inactive)`
regex!(PT_OLD_CACHED, r"{S} cached[);]");

// MPS (§3).
regex!(
    MPS,
    r"MPS backend out of memory \(MPS allocated: {S}, other allocations: {S}(?:, max allowed: {S})?\)"
);
regex!(MPS_TRIED, r"Tried to allocate {S}(?: on (\w+) pool)?");

// cudaMallocAsync backend (§2h).
regex!(
    ASYNC,
    r"Allocation on device ([0-9]+) would exceed allowed memory"
);
regex!(
    ASYNC_FIELD,
    r"^\s*(Currently allocated|Requested|Device limit|Free \(according to CUDA\)|PyTorch limit[^:]*)?\s*: *{S}"
);

// Raw CUDA errors (§2h).
regex!(
    CUDA_ERR,
    r"(torch\.AcceleratorError|RuntimeError)?:? *(CUDA|HIP) error: out of memory"
);

// CPU allocator (§3).
regex!(
    CPU,
    r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory): you tried to allocate ([0-9]+) bytes"
);
regex!(
    CPU_OLD,
    r"Torch: not enough memory: you tried to allocate ([0-9]+)GB"
);
regex!(ENFORCE, r"\[enforce fail at ([^\]]+)\]");

// cuBLAS / cuDNN (§2h).
regex!(
    BLAS,
    r"(CUBLAS_STATUS_ALLOC_FAILED|CUBLAS_STATUS_NOT_INITIALIZED|CUSOLVER_STATUS_ALLOC_FAILED|CUSPARSE_STATUS_ALLOC_FAILED|CUFFT_ALLOC_FAILED)"
);
regex!(BLAS_CALL, r"when calling `([^`]*)`");
regex!(
    DNN,
    r"(CUDNN_STATUS_ALLOC_FAILED|CUDNN_STATUS_NOT_INITIALIZED|Unable to find a valid cuDNN algorithm to run convolution|Not enough memory for workspace|Skipping plan since workspace violation)"
);

// NCCL (§2h).
// NCCL's own WARN line, or c10d's `Last error:` block where the failure is a line of its own.
regex!(
    NCCL_OOM,
    r"(?:NCCL WARN .*Cuda failure(?: [0-9]+)? 'out of memory'|^\s*(?:Last error:\s*)?Cuda failure(?: [0-9]+)? 'out of memory')"
);
regex!(NCCL_HEAD, r"^\S+?:([0-9]+):[0-9]+ \[([0-9]+)\]");

// TensorFlow / XLA (§5).
regex!(
    BFC_RAN,
    r"Allocator \(([^)]*)\) ran out of memory trying to allocate ([0-9.]+) ?([KMGTPE]?i?B)(?: \(rounded to ([0-9]+)\))?(?:.*?requested by op ?(\S*))?"
);
regex!(
    TF_SHAPE,
    r"OOM when allocating tensor with shape ?\[([^\]]*)\] and type (\w+)(?: on (\S+))?(?: by allocator (\S+))?"
);
regex!(
    XLA_BYTES,
    r"RESOURCE_EXHAUSTED:? *Out of memory while trying to allocate ([0-9]+) bytes"
);
regex!(
    XLA_REQUEST,
    r"RESOURCE_EXHAUSTED:? *Failed to allocate request for ([0-9.]+) ?([KMGTPE]?i?B) \(([0-9]+)B\)(?: on device ordinal ([0-9]+))?"
);
regex!(
    SE_FAILED,
    r"failed to allocate ([0-9.]+)([KMGTPE]?) \(([0-9]+) bytes\) from device: (CUDA_ERROR_OUT_OF_MEMORY|HIP_ERROR_OutOfMemory)"
);
regex!(
    TF_EXC,
    r"ResourceExhaustedError|Resource exhausted:|RESOURCE_EXHAUSTED"
);
regex!(TF_DEVICE, r"device:GPU:([0-9]+)");
regex!(BFC_GPU, r"GPU_([0-9]+)_bfc");
regex!(STAT_LINE, r"^\s*(\w+):\s+([0-9]+)\s*$");
regex!(PEAK_SIZE, r"^\s*Size: ([0-9.]+) ?([KMGTPE]?i?B)\s*$");
regex!(PEAK_SHAPE, r"^\s*(?:Shape|Entry Parameter Subshape): (\S+)");
regex!(
    PEAK_SOURCE,
    r#"source_file="(?:[^"]*/)?([^"/]*)" source_line=([0-9]+)"#
);

// Host: kernel OOM killer, SLURM, DataLoader, torchrun (§4).
regex!(K_INVOKED, r"(\S+) invoked oom-killer:");
regex!(
    K_CONSTRAINT,
    r"oom-kill:constraint=(\w+),.*?task=([^,]*),pid=([0-9]+)"
);
regex!(
    K_KILLED,
    r"(Memory cgroup out of memory|Out of memory(?: \(oom_kill_allocating_task\))?): Kill(?:ed)? process ([0-9]+) \(([^)]*)\)"
);
regex!(K_KILLED_LEGACY, r"Killed process ([0-9]+) \(([^)]*)\)");
regex!(
    K_RSS,
    r"total-vm:([0-9,]+)kB, anon-rss:([0-9,]+)kB, file-rss:([0-9,]+)kB(?:, shmem-rss:([0-9,]+)kB)?"
);
regex!(K_REAPER, r"oom_reaper: reaped process ([0-9]+) \(([^)]*)\)");
regex!(SLURM, r"Detected ([0-9]+) oom[_-]kill events?");
regex!(
    DL_KILLED,
    r"DataLoader worker \(pid ([0-9]+)\) is killed by signal: ([A-Za-z ]+)"
);
regex!(DL_BUS, r"Unexpected bus error encountered in worker");
regex!(DL_SHM_WRITE, r"unable to write to file </torch_");
regex!(
    DL_EXITED,
    r"DataLoader worker \(pid\(?s?\)? ([0-9, ]+)\) exited unexpectedly"
);
regex!(
    TR_FAILED,
    r"failed \(exitcode: (-9)\) local_rank: ([0-9]+) \(pid: ([0-9]+)\)"
);
regex!(TR_BOX, r"exitcode\s*: (-9) \(pid: ([0-9]+)\)");
regex!(TR_SIGNAL, r"Signal 9 \(SIGKILL\) received by PID ([0-9]+)");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Alloc,
    Mps,
    Async,
    CudaError,
    Cpu,
    Library,
    Nccl,
    TfXla,
    Host,
    DataLoader,
    Torchrun,
}

impl Group {
    /// Lines after an event's last line within which a related line still joins it.
    fn window(self) -> u64 {
        match self {
            // a re-raised or re-logged message follows its traceback (tens of lines)
            Group::Alloc | Group::Mps | Group::Async | Group::Cpu => 500,
            Group::CudaError | Group::Library | Group::DataLoader => 200,
            Group::Nccl => 100,
            // BufferAssignment stats + 15 peak buffers + the Python traceback before the re-raise
            Group::TfXla => 400,
            // the kernel prints its Mem-Info and one line per task between `invoked` and `Killed`
            Group::Host => 5000,
            Group::Torchrun => 300,
        }
    }
}

struct Open {
    id: u64,
    ev: OomEvent,
    group: Group,
    last: u64,
    /// Identity for repeated messages (same numbers, same rank).
    key: Option<String>,
    versions: Versions,
    /// Priority of the source of `requested_bytes` (higher wins).
    req_prio: u8,
    bfc_seen: bool,
    exception_seen: bool,
    xla: bool,
    kill_seen: bool,
}

/// A multi-line message being collected.
enum Pending {
    /// A PyTorch allocator message that goes on over the next lines.
    Wrap {
        line: u64,
        rank: Option<u64>,
        spaced: String,
        joined: String,
        left: u8,
    },
    /// Lines of a block that belong to an open event.
    Block { id: u64, what: BlockKind, left: u8 },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// cudaMallocAsync's `Currently allocated : ...` lines; bool: the last label was `PyTorch limit`
    Async(u8),
    /// BFC `Stats:` lines.
    Stats,
    /// XLA `Peak buffers:` (Buffer 1 only).
    Peak,
    /// The lines after `CUDA error: out of memory` (version clues).
    CudaErrorTail,
}

/// Builds events from lines. Feed lines in order with [`Parser::line`]; when
/// [`Parser::wants_next`] is true the next line must be fed whatever it contains.
#[derive(Default)]
pub struct Parser {
    /// Boxed: events are large and the list is edited in the middle.
    #[allow(clippy::vec_box)]
    open: Vec<Box<Open>>,
    done: Vec<OomEvent>,
    pending: Option<Pending>,
    next_id: u64,
    dropped: u64,
}

#[derive(PartialEq, Eq)]
enum Completeness {
    Complete,
    /// The message could end here, or its hint could follow on the next line.
    MaybeMore,
    Incomplete,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Whether the next line must be fed (a multi-line message is being read).
    pub fn wants_next(&self) -> bool {
        self.pending.is_some()
    }

    /// Reads one line (without its `\n`), skipping it cheaply when it cannot belong to an event:
    /// the entry point for callers that stream lines themselves (e.g. a child process's output).
    /// Line numbers are 1-based and must increase.
    pub fn feed(&mut self, lineno: u64, raw: &[u8]) {
        if self.wants_next() || super::scan::is_candidate(raw) {
            self.line(lineno, raw);
        }
    }

    /// Reads one line (without its `\n`) unconditionally (same result as `feed`, slower).
    pub fn line(&mut self, lineno: u64, raw: &[u8]) {
        if self.pending.is_some() && self.continue_pending(lineno, raw) {
            return;
        }
        self.expire(lineno);
        let text = clean_line(raw);
        self.classify(lineno, &text);
    }

    /// All events, in line order.
    pub fn finish(mut self) -> Report {
        if let Some(Pending::Wrap {
            line,
            rank,
            spaced,
            joined,
            ..
        }) = self.pending.take()
        {
            self.finish_wrap(line, rank, &spaced, &joined);
        }
        let open = std::mem::take(&mut self.open);
        for o in open {
            self.finalize(o);
        }
        let mut events = std::mem::take(&mut self.done);
        events.sort_by_key(|e| e.line);
        let mut warnings = Vec::new();
        if self.dropped > 0 {
            warnings.push(format!(
                "{} more events not kept (at most {MAX_EVENTS} are reported)",
                self.dropped
            ));
        }
        Report {
            events,
            warnings,
            lines: 0,
            bytes: 0,
        }
    }

    fn expire(&mut self, lineno: u64) {
        if self
            .open
            .iter()
            .all(|o| lineno <= o.last + o.group.window())
        {
            return;
        }
        let mut i = 0;
        while i < self.open.len() {
            if lineno > self.open[i].last + self.open[i].group.window() {
                let o = self.open.remove(i);
                self.finalize(o);
            } else {
                i += 1;
            }
        }
    }

    fn finalize(&mut self, mut o: Box<Open>) {
        if self.done.len() >= MAX_EVENTS {
            self.dropped += 1;
            return;
        }
        if o.group == Group::TfXla {
            o.ev.kind = if o.xla {
                OomKind::XlaOom
            } else {
                OomKind::TfOom
            };
        }
        o.ev.framework_versions = o.versions.render();
        o.ev.derive();
        analysis::diagnose(&mut o.ev);
        self.done.push(o.ev);
    }

    fn open_event(&mut self, group: Group, ev: OomEvent, lineno: u64) -> usize {
        self.next_id += 1;
        self.open.push(Box::new(Open {
            id: self.next_id,
            ev,
            group,
            last: lineno,
            key: None,
            versions: Versions::default(),
            req_prio: 0,
            bfc_seen: false,
            exception_seen: false,
            xla: false,
            kill_seen: false,
        }));
        self.open.len() - 1
    }

    /// The most recent open event of a group within its window that satisfies `pred`.
    fn find(&self, group: Group, lineno: u64, pred: impl Fn(&Open) -> bool) -> Option<usize> {
        self.open
            .iter()
            .rposition(|o| o.group == group && lineno <= o.last + group.window() && pred(o))
    }

    fn new_event(kind: OomKind, lineno: u64, text: &str) -> OomEvent {
        let mut ev = OomEvent::new(kind, lineno);
        ev.rank = rank_of(text);
        ev.message = message_of(text);
        ev
    }

    fn classify(&mut self, lineno: u64, text: &str) {
        if let Some(m) = PT_TRIGGER.find(text) {
            let start = PT_CLASS
                .find(text)
                .filter(|c| c.end() > m.start())
                .map(|c| c.start())
                .unwrap_or(m.start());
            let msg = &text[start..];
            let rank = rank_of(text);
            let t = msg.trim_end();
            // only a message that has started its numbers (or stops right after its first
            // sentence) goes on over the next lines; "CUDA out of memory, skipping batch" does not
            let may_wrap = msg.contains("Tried to allocate")
                || msg.contains("preemptively")
                || t.ends_with("out of memory.")
                || t.ends_with("out of memory");
            match alloc_completeness(msg) {
                Completeness::Complete => self.finish_wrap(lineno, rank, msg, msg),
                _ if !may_wrap => self.finish_wrap(lineno, rank, msg, msg),
                _ => {
                    self.pending = Some(Pending::Wrap {
                        line: lineno,
                        rank,
                        spaced: msg.to_string(),
                        joined: msg.to_string(),
                        left: WRAP_LINES,
                    })
                }
            }
            return;
        }
        // cheap literal gates first: most candidate lines belong to no family
        let has = |w: &str| text.contains(w);
        let oom = has("f memory");
        if let Some(c) = MPS.captures(text).filter(|_| oom) {
            self.mps(lineno, text, &c);
            return;
        }
        if let Some(c) = ASYNC.captures(text).filter(|_| has("xceed allowed")) {
            let mut ev = Self::new_event(OomKind::CudaMallocAsyncOom, lineno, text);
            ev.device = Some(format!("cuda:{}", &c[1]));
            let i = self.open_event(Group::Async, ev, lineno);
            if text.contains("torch.cuda.OutOfMemoryError") {
                self.open[i].versions.class(Some(v(1, 13)), Some(v(2, 4)));
            } else if text.contains("torch.OutOfMemoryError") {
                self.open[i].versions.class(Some(v(2, 4)), None);
            }
            let id = self.open[i].id;
            self.pending = Some(Pending::Block {
                id,
                what: BlockKind::Async(0),
                left: 8,
            });
            return;
        }
        let cpu = has("CPUAllocator") || has("enough memory");
        if let Some(c) = CPU.captures(text).filter(|_| cpu) {
            let mut ev = Self::new_event(OomKind::CpuAlloc, lineno, text);
            ev.device = Some("cpu".into());
            ev.requested_bytes = c[1].parse().ok();
            ev.source = ENFORCE.captures(text).map(|e| basename(&e[1]).to_string());
            self.dedupe_or_open(Group::Cpu, ev, lineno);
            return;
        }
        if let Some(c) = CPU_OLD.captures(text).filter(|_| cpu) {
            let mut ev = Self::new_event(OomKind::CpuAlloc, lineno, text);
            ev.device = Some("cpu".into());
            ev.requested_bytes = c[1]
                .parse::<u64>()
                .ok()
                .and_then(|g| g.checked_mul(1 << 30));
            self.dedupe_or_open(Group::Cpu, ev, lineno);
            return;
        }
        let lib = has("_FAILED") || has("NOT_INIT") || has("cuDNN") || has("workspace");
        if let Some(c) = BLAS.captures(text).filter(|_| lib) {
            let mut ev = Self::new_event(OomKind::CublasAlloc, lineno, text);
            ev.error = Some(c[1].to_string());
            ev.call = BLAS_CALL.captures(text).map(|c| c[1].to_string());
            self.dedupe_or_open(Group::Library, ev, lineno);
            return;
        }
        if let Some(c) = DNN.captures(text).filter(|_| lib) {
            let mut ev = Self::new_event(OomKind::CudnnAlloc, lineno, text);
            ev.error = Some(c[1].to_string());
            self.dedupe_or_open(Group::Library, ev, lineno);
            return;
        }
        if oom && (NCCL_OOM.is_match(text) || NCCL_OOM.is_match(strip_prefix(text))) {
            self.nccl(lineno, text);
            return;
        }
        if let Some(c) = CUDA_ERR.captures(text).filter(|_| oom) {
            let mut ev = Self::new_event(OomKind::CudaErrorOom, lineno, text);
            if &c[2] == "HIP" {
                ev.error = Some("HIP error: out of memory".into());
            }
            let class = c.get(1).map(|m| m.as_str().to_string());
            let i = self.dedupe_or_open(Group::CudaError, ev, lineno);
            match class.as_deref() {
                Some("torch.AcceleratorError") => self.open[i].versions.class(Some(v(2, 8)), None),
                Some("RuntimeError") => self.open[i].versions.class(None, Some(v(2, 8))),
                _ => {}
            }
            let id = self.open[i].id;
            self.pending = Some(Pending::Block {
                id,
                what: BlockKind::CudaErrorTail,
                left: 4,
            });
            return;
        }
        let tf = oom
            || has("OutOfMemory")
            || has("OOM when")
            || has("xhausted")
            || has("XHAUSTED")
            || has("bfc_")
            || has("BufferAssignment")
            || has("Peak buffers");
        if tf && self.tf_xla(lineno, text) {
            return;
        }
        if (oom || has("oom") || has("Kill")) && self.host(lineno, text) {
            return;
        }
        if (has("DataLoader") || has("bus error") || has("</torch_"))
            && self.dataloader(lineno, text)
        {
            return;
        }
        if has("-9") || has("SIGKILL") {
            self.torchrun(lineno, text);
        }
    }

    /// Joins `ev` with an open event of the same group whose key is equal, or opens it.
    fn dedupe_or_open(&mut self, group: Group, ev: OomEvent, lineno: u64) -> usize {
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            ev.kind, ev.rank, ev.requested_bytes, ev.error, ev.device
        );
        self.dedupe_key_or_open(group, ev, key, lineno)
    }

    fn dedupe_key_or_open(
        &mut self,
        group: Group,
        ev: OomEvent,
        key: String,
        lineno: u64,
    ) -> usize {
        if let Some(i) = self.find(group, lineno, |o| o.key.as_deref() == Some(&key)) {
            self.open[i].last = lineno;
            return i;
        }
        let i = self.open_event(group, ev, lineno);
        self.open[i].key = Some(key);
        i
    }

    /// Handles the line after a multi-line message started. Returns true when the line was used.
    fn continue_pending(&mut self, lineno: u64, raw: &[u8]) -> bool {
        let Some(p) = self.pending.take() else {
            return false;
        };
        let text = clean_line(raw);
        match p {
            Pending::Wrap {
                line,
                rank,
                mut spaced,
                mut joined,
                left,
            } => {
                let body = strip_prefix(&text).trim_end();
                let state = alloc_completeness(&spaced);
                let takes = !body.trim().is_empty()
                    && !super::scan::is_candidate(raw)
                    && match state {
                        Completeness::MaybeMore => is_hint_continuation(body),
                        _ => true,
                    }
                    && spaced.len() < WRAP_CHARS;
                if !takes {
                    self.finish_wrap(line, rank, &spaced, &joined);
                    return false;
                }
                spaced.push(' ');
                spaced.push_str(body.trim_start());
                joined.push_str(body.trim_start());
                if alloc_completeness(&spaced) == Completeness::Complete || left <= 1 {
                    self.finish_wrap(line, rank, &spaced, &joined);
                } else {
                    self.pending = Some(Pending::Wrap {
                        line,
                        rank,
                        spaced,
                        joined,
                        left: left - 1,
                    });
                }
                true
            }
            Pending::Block { id, what, left } => {
                let Some(i) = self.open.iter().position(|o| o.id == id) else {
                    return false;
                };
                let used = self.block_line(i, what, &text, lineno);
                match used {
                    Some(next) if left > 1 => {
                        self.pending = Some(Pending::Block {
                            id,
                            what: next,
                            left: left - 1,
                        });
                        true
                    }
                    Some(_) => true,
                    None => false,
                }
            }
        }
    }

    /// One line of a block; `Some(next state)` when it belonged to the block.
    fn block_line(
        &mut self,
        i: usize,
        what: BlockKind,
        text: &str,
        lineno: u64,
    ) -> Option<BlockKind> {
        let body = strip_prefix(text);
        let o = &mut self.open[i];
        match what {
            BlockKind::Async(after_limit) => {
                if body.trim_start().starts_with("PyTorch limit") && !body.contains(':') {
                    o.last = lineno;
                    return Some(BlockKind::Async(1));
                }
                let c = ASYNC_FIELD.captures(body)?;
                let label = c.get(1).map(|m| m.as_str()).unwrap_or(if after_limit == 1 {
                    "PyTorch limit"
                } else {
                    ""
                });
                let value = size(&mut o.ev.warnings, field_of_async(label), &c[2], &c[3]);
                match label {
                    "Currently allocated" => o.ev.allocated_bytes = value,
                    "Requested" => o.ev.requested_bytes = value,
                    "Device limit" => o.ev.total_capacity_bytes = value,
                    "Free (according to CUDA)" => o.ev.free_bytes = value,
                    l if l.starts_with("PyTorch limit") => o.ev.allowed_bytes = value,
                    _ => return None,
                }
                o.last = lineno;
                Some(BlockKind::Async(0))
            }
            BlockKind::Stats => {
                let c = STAT_LINE.captures(body)?;
                let n: Option<u64> = c[2].parse().ok();
                match &c[1] {
                    "Limit" => o.ev.allowed_bytes = n,
                    "InUse" => o.ev.allocated_bytes = n,
                    _ => {}
                }
                o.last = lineno;
                Some(BlockKind::Stats)
            }
            BlockKind::Peak => {
                let t = body.trim();
                if t.starts_with("====") {
                    return None;
                }
                if let Some(c) = PEAK_SIZE.captures(t) {
                    if o.ev.largest_buffer_bytes.is_none() {
                        o.ev.largest_buffer_bytes = parse_value(&c[1], &c[2]).ok();
                    }
                } else if let Some(c) = PEAK_SHAPE.captures(t) {
                    o.ev.tensor_shape.get_or_insert_with(|| c[1].to_string());
                } else if let Some(c) = PEAK_SOURCE.captures(t) {
                    o.ev.source
                        .get_or_insert_with(|| format!("{}:{}", &c[1], &c[2]));
                } else if !(t.starts_with("Buffer ")
                    || t.starts_with("Operator:")
                    || t.starts_with("XLA Label:")
                    || t.is_empty())
                {
                    return None;
                }
                o.last = lineno;
                Some(BlockKind::Peak)
            }
            BlockKind::CudaErrorTail => {
                if body.contains("API call,so") || body.contains("CUDA_LAUNCH_BLOCKING=1.") {
                    o.versions.wording(None, Some(v(2, 0)));
                } else if body.contains("API call, so") {
                    o.versions.wording(Some(v(2, 0)), None);
                } else if body.contains("Search for `cudaErrorMemoryAllocation'") {
                    o.versions.wording(Some(v(2, 9)), Some(v(2, 11)));
                } else if !(body.contains("CUDA_LAUNCH_BLOCKING")
                    || body.contains("TORCH_USE_CUDA_DSA")
                    || body.contains("cudaErrorMemoryAllocation"))
                {
                    return None;
                }
                o.last = lineno;
                Some(BlockKind::CudaErrorTail)
            }
        }
    }

    /// A complete (or as complete as the log has it) PyTorch allocator message.
    fn finish_wrap(&mut self, line: u64, rank: Option<u64>, spaced: &str, joined: &str) {
        let a = collapse_ws(spaced);
        let (ev_a, ver_a, n_a) = alloc_fields(&a, line);
        let (mut ev, versions) = if joined != spaced {
            let b = collapse_ws(joined);
            let (ev_b, ver_b, n_b) = alloc_fields(&b, line);
            if n_b > n_a {
                (ev_b, ver_b)
            } else {
                (ev_a, ver_a)
            }
        } else {
            (ev_a, ver_a)
        };
        ev.rank = rank;
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            ev.kind,
            rank,
            ev.device,
            ev.requested_bytes,
            ev.total_capacity_bytes,
            ev.free_bytes,
            ev.allocated_bytes,
            ev.reserved_bytes
        );
        self.expire(line);
        let i = self.dedupe_key_or_open(Group::Alloc, ev, key, line);
        if self.open[i].ev.line == line {
            self.open[i].versions = versions;
        }
    }

    fn mps(&mut self, lineno: u64, text: &str, c: &Captures) {
        let mut ev = Self::new_event(OomKind::MpsOom, lineno, text);
        ev.device = Some("mps".into());
        let w = &mut ev.warnings;
        ev.allocated_bytes = size(w, "allocated_bytes", &c[1], &c[2]);
        ev.other_allocations_bytes = size(w, "other_allocations_bytes", &c[3], &c[4]);
        if let (Some(n), Some(u)) = (c.get(5), c.get(6)) {
            ev.allowed_bytes = size(w, "allowed_bytes", n.as_str(), u.as_str());
        }
        if let Some(t) = MPS_TRIED.captures(text) {
            ev.requested_bytes = size(&mut ev.warnings, "requested_bytes", &t[1], &t[2]);
            ev.pool = t.get(3).map(|m| m.as_str().to_string());
        }
        let legacy_units = matches!(&c[2], "KB" | "MB" | "GB");
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}",
            ev.rank, ev.requested_bytes, ev.allocated_bytes, ev.other_allocations_bytes
        );
        let i = self.dedupe_key_or_open(Group::Mps, ev, key, lineno);
        if legacy_units {
            self.open[i].versions.wording(None, Some(v(2, 8)));
        } else if c[2].ends_with("iB") {
            self.open[i].versions.wording(Some(v(2, 8)), None);
        }
    }

    fn nccl(&mut self, lineno: u64, text: &str) {
        let mut ev = Self::new_event(OomKind::NcclOom, lineno, text);
        let head = NCCL_HEAD.captures(strip_prefix(text));
        if let Some(h) = &head {
            ev.pid = h[1].parse().ok();
            ev.device = Some(format!("cuda:{}", &h[2]));
        }
        ev.error = Some("Cuda failure 'out of memory'".into());
        let pid = ev.pid;
        let rank = ev.rank;
        if let Some(i) = self.find(Group::Nccl, lineno, |o| {
            (o.ev.pid == pid || pid.is_none() || o.ev.pid.is_none()) && o.ev.rank == rank
        }) {
            let o = &mut self.open[i];
            o.last = lineno;
            if o.ev.pid.is_none() {
                o.ev.pid = pid;
            }
            if o.ev.device.is_none() {
                o.ev.device = ev.device;
            }
            return;
        }
        self.open_event(Group::Nccl, ev, lineno);
    }

    /// TensorFlow / XLA lines. Returns true when the line was one.
    fn tf_xla(&mut self, lineno: u64, text: &str) -> bool {
        let is_xla_path = text.contains("xla/") || text.contains("external/tsl/");
        let is_tf_path = text.contains("tensorflow/") || text.contains("local_tsl/");
        if let Some(c) = BFC_RAN.captures(text) {
            if text.contains("freed_by_count") || text.contains("not a failure") {
                return true; // TSL: "The caller indicates that this is not a failure"
            }
            let mut ev = Self::new_event(OomKind::TfOom, lineno, text);
            ev.allocator = Some(c[1].to_string());
            ev.device = BFC_GPU.captures(&c[1]).map(|g| format!("gpu:{}", &g[1]));
            ev.op = c
                .get(5)
                .map(|m| m.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let rounded: Option<u64> = c.get(4).and_then(|m| m.as_str().parse().ok());
            let printed = parse_value(&c[2], &c[3]).ok();
            let req = rounded.or(printed);
            let i = match self.find(Group::TfXla, lineno, |o| !o.bfc_seen && !o.exception_seen) {
                Some(i) => {
                    let o = &mut self.open[i];
                    o.last = lineno;
                    o.ev.allocator = ev.allocator;
                    if o.ev.device.is_none() {
                        o.ev.device = ev.device;
                    }
                    o.ev.op = ev.op;
                    i
                }
                None => self.open_event(Group::TfXla, ev, lineno),
            };
            let o = &mut self.open[i];
            o.bfc_seen = true;
            o.xla |= is_xla_path;
            set_req(o, req, 2);
            return true;
        }
        if let Some(c) = SE_FAILED.captures(text) {
            // TensorFlow/XLA stream executor growing its pool: a failure only if more follows.
            let req: Option<u64> = c[3].parse().ok();
            let i = match self.find(Group::TfXla, lineno, |o| !o.exception_seen) {
                Some(i) => i,
                None => {
                    let ev = Self::new_event(OomKind::TfOom, lineno, text);
                    self.open_event(Group::TfXla, ev, lineno)
                }
            };
            let o = &mut self.open[i];
            o.last = lineno;
            o.xla |= is_xla_path;
            set_req(o, req, 1);
            if c[4].starts_with("HIP") {
                o.ev.error
                    .get_or_insert_with(|| "HIP_ERROR_OutOfMemory".into());
            }
            return true;
        }
        let shape = TF_SHAPE.captures(text);
        let xla_bytes = XLA_BYTES.captures(text);
        let xla_req = XLA_REQUEST.captures(text);
        let exc = TF_EXC.is_match(text);
        if shape.is_some() || xla_bytes.is_some() || xla_req.is_some() || exc {
            let mut req = None;
            let mut device = None;
            let mut xla = is_xla_path || text.contains("Xla") || text.contains("Jax");
            if let Some(c) = &xla_bytes {
                req = c[1].parse().ok();
                xla = true;
            }
            if let Some(c) = &xla_req {
                req = c[3].parse().ok();
                device = c.get(4).map(|m| format!("gpu:{}", m.as_str()));
                xla = true;
            }
            let pred_shape = shape.as_ref().map(|c| format!("[{}]", &c[1]));
            let i = match self.find(Group::TfXla, lineno, |o| {
                !o.exception_seen
                    || ((req.is_none() || o.ev.requested_bytes == req || o.req_prio < 3)
                        && (pred_shape.is_none()
                            || o.ev.tensor_shape.is_none()
                            || o.ev.tensor_shape == pred_shape))
            }) {
                Some(i) => i,
                None => {
                    let ev = Self::new_event(OomKind::TfOom, lineno, text);
                    self.open_event(Group::TfXla, ev, lineno)
                }
            };
            let o = &mut self.open[i];
            o.last = lineno;
            o.exception_seen = true;
            o.xla |= xla;
            if !xla && !is_tf_path && (shape.is_some() || text.contains("ResourceExhaustedError")) {
                o.xla = false;
            }
            set_req(o, req, 3);
            if let Some(c) = &shape {
                if o.ev.tensor_shape.is_none() || !o.xla {
                    o.ev.tensor_shape = Some(format!("[{}]", &c[1]));
                    o.ev.dtype = Some(c[2].to_string());
                    o.ev.tensor_bytes = tensor_bytes(&c[1], &c[2]);
                }
                if let Some(d) = c.get(3).and_then(|d| TF_DEVICE.captures(d.as_str())) {
                    o.ev.device.get_or_insert_with(|| format!("gpu:{}", &d[1]));
                }
                if let Some(a) = c.get(4) {
                    o.ev.allocator.get_or_insert_with(|| a.as_str().to_string());
                }
            }
            if let Some(d) = device {
                o.ev.device.get_or_insert(d);
            }
            return true;
        }
        // lines that belong to an open TF/XLA event: the BFC dump, BufferAssignment
        if text.contains("bfc_allocator")
            || text.contains("BufferAssignment")
            || text.contains("Peak buffers")
        {
            if let Some(i) = self.find(Group::TfXla, lineno, |_| true) {
                let o = &mut self.open[i];
                o.last = lineno;
                if text.contains("BufferAssignment") {
                    o.xla = true;
                }
                let id = o.id;
                if text.trim_end().ends_with("Stats:") {
                    self.pending = Some(Pending::Block {
                        id,
                        what: BlockKind::Stats,
                        left: 10,
                    });
                } else if text.contains("Peak buffers") && o.ev.largest_buffer_bytes.is_none() {
                    self.pending = Some(Pending::Block {
                        id,
                        what: BlockKind::Peak,
                        left: 12,
                    });
                }
            }
            return true;
        }
        false
    }

    /// Kernel OOM killer and SLURM. Returns true when the line was one.
    fn host(&mut self, lineno: u64, text: &str) -> bool {
        if let Some(c) = K_INVOKED.captures(text) {
            let mut ev = Self::new_event(OomKind::HostOomKiller, lineno, text);
            ev.invoked_by = Some(c[1].to_string());
            self.open_event(Group::Host, ev, lineno);
            return true;
        }
        if let Some(c) = K_CONSTRAINT.captures(text) {
            let pid: Option<u64> = c[3].parse().ok();
            let i = match self.find(Group::Host, lineno, |o| {
                o.ev.constraint.is_none() && (o.ev.pid.is_none() || o.ev.pid == pid)
            }) {
                Some(i) => i,
                None => {
                    let ev = Self::new_event(OomKind::HostOomKiller, lineno, text);
                    self.open_event(Group::Host, ev, lineno)
                }
            };
            let o = &mut self.open[i];
            o.last = lineno;
            o.ev.constraint = Some(c[1].to_string());
            o.ev.pid = pid;
            o.ev.process_name = Some(c[2].to_string());
            return true;
        }
        let killed = K_KILLED.captures(text).map(|c| {
            (
                c[2].parse::<u64>().ok(),
                c[3].to_string(),
                c[1].starts_with("Memory cgroup"),
            )
        });
        let legacy = if killed.is_none() {
            K_KILLED_LEGACY
                .captures(text)
                .map(|c| (c[1].parse::<u64>().ok(), c[2].to_string(), false))
        } else {
            None
        };
        if let Some((pid, name, memcg)) = killed.clone().or(legacy.clone()) {
            let is_legacy_second = legacy.is_some();
            let i = match self.find(Group::Host, lineno, |o| {
                !o.kill_seen || o.ev.pid == pid || (is_legacy_second && lineno <= o.last + 5)
            }) {
                Some(i) => i,
                None => {
                    let ev = Self::new_event(OomKind::HostOomKiller, lineno, text);
                    self.open_event(Group::Host, ev, lineno)
                }
            };
            let o = &mut self.open[i];
            o.last = lineno;
            o.kill_seen = true;
            o.ev.pid = pid;
            o.ev.process_name = Some(name);
            if memcg {
                o.ev.constraint
                    .get_or_insert_with(|| "CONSTRAINT_MEMCG".into());
            }
            if let Some(r) = K_RSS.captures(text) {
                let kb = |s: &str| parse_value(s, "kB").ok();
                o.ev.total_vm_bytes = kb(&r[1]);
                o.ev.anon_rss_bytes = kb(&r[2]);
                o.ev.file_rss_bytes = kb(&r[3]);
                o.ev.shmem_rss_bytes = r.get(4).and_then(|m| kb(m.as_str()));
            }
            return true;
        }
        if let Some(c) = K_REAPER.captures(text) {
            let pid: Option<u64> = c[1].parse().ok();
            if let Some(i) = self.find(Group::Host, lineno, |o| o.ev.pid == pid) {
                self.open[i].last = lineno;
            } else {
                let mut ev = Self::new_event(OomKind::HostOomKiller, lineno, text);
                ev.pid = pid;
                ev.process_name = Some(c[2].to_string());
                let i = self.open_event(Group::Host, ev, lineno);
                self.open[i].kill_seen = true;
            }
            return true;
        }
        if SLURM.is_match(text) {
            let mut ev = Self::new_event(OomKind::HostOomKiller, lineno, text);
            ev.constraint = Some("CONSTRAINT_MEMCG".into());
            ev.invoked_by = Some("slurmstepd".into());
            self.dedupe_or_open(Group::Host, ev, lineno);
            return true;
        }
        false
    }

    fn dataloader(&mut self, lineno: u64, text: &str) -> bool {
        let (kind, pid, signal) = if let Some(c) = DL_KILLED.captures(text) {
            let sig = c[2].trim().to_string();
            let kind = match sig.as_str() {
                "Killed" => OomKind::DataloaderKilled,
                s if s.starts_with("Bus error") => OomKind::DataloaderShm,
                _ => return true, // Terminated, Segmentation fault: not memory
            };
            (kind, c[1].parse::<u64>().ok(), Some(sig))
        } else if DL_BUS.is_match(text) {
            (OomKind::DataloaderShm, None, Some("Bus error".to_string()))
        } else if DL_SHM_WRITE.is_match(text) {
            (OomKind::DataloaderShm, None, None)
        } else if DL_EXITED.is_match(text) {
            if let Some(i) = self.find(Group::DataLoader, lineno, |_| true) {
                self.open[i].last = lineno;
            }
            return true;
        } else {
            return false;
        };
        if let Some(i) = self.find(Group::DataLoader, lineno, |o| {
            o.ev.kind == kind && (o.ev.pid.is_none() || pid.is_none() || o.ev.pid == pid)
        }) {
            let o = &mut self.open[i];
            o.last = lineno;
            if o.ev.pid.is_none() {
                o.ev.pid = pid;
            }
            if o.ev.signal.is_none() {
                o.ev.signal = signal;
            }
            return true;
        }
        let mut ev = Self::new_event(kind, lineno, text);
        ev.pid = pid;
        ev.signal = signal;
        self.open_event(Group::DataLoader, ev, lineno);
        true
    }

    fn torchrun(&mut self, lineno: u64, text: &str) -> bool {
        let (pid, local_rank, signal) = if let Some(c) = TR_FAILED.captures(text) {
            (c[3].parse::<u64>().ok(), c[2].parse::<u64>().ok(), None)
        } else if let Some(c) = TR_BOX.captures(text) {
            (c[2].parse::<u64>().ok(), None, None)
        } else if let Some(c) = TR_SIGNAL.captures(text) {
            (c[1].parse::<u64>().ok(), None, Some("SIGKILL".to_string()))
        } else {
            return false;
        };
        if let Some(i) = self.find(Group::Torchrun, lineno, |o| o.ev.pid == pid) {
            let o = &mut self.open[i];
            o.last = lineno;
            if o.ev.local_rank.is_none() {
                o.ev.local_rank = local_rank;
            }
            if o.ev.signal.is_none() {
                o.ev.signal = signal;
            }
            return true;
        }
        let mut ev = Self::new_event(OomKind::TorchrunSigkill, lineno, text);
        ev.pid = pid;
        ev.local_rank = local_rank;
        ev.exit_code = Some(-9);
        ev.signal = signal.or(Some("SIGKILL".into()));
        self.open_event(Group::Torchrun, ev, lineno);
        true
    }
}

fn set_req(o: &mut Open, req: Option<u64>, prio: u8) {
    if let Some(r) = req {
        if prio > o.req_prio {
            o.ev.requested_bytes = Some(r);
            o.req_prio = prio;
        }
    }
}

fn field_of_async(label: &str) -> &'static str {
    match label {
        "Currently allocated" => "allocated_bytes",
        "Requested" => "requested_bytes",
        "Device limit" => "total_capacity_bytes",
        "Free (according to CUDA)" => "free_bytes",
        _ => "allowed_bytes",
    }
}

/// A size from a regex capture; an overflowing one is absent with a warning on the event.
fn size(warnings: &mut Vec<String>, field: &str, num: &str, unit: &str) -> Option<u64> {
    match parse_value(num, unit) {
        Ok(b) => Some(b),
        Err(SizeError::Overflow) => {
            warnings.push(format!(
                "{field}: the printed size {num} {unit} does not fit in 64 bits (the value \
                 'not available' or 'no limit', 2^64-1, formatted); treated as absent"
            ));
            None
        }
        Err(SizeError::Malformed) => None,
    }
}

fn sz(warnings: &mut Vec<String>, field: &str, c: &Captures, i: usize) -> Option<u64> {
    match (c.get(i), c.get(i + 1)) {
        (Some(n), Some(u)) => size(warnings, field, n.as_str(), u.as_str()),
        _ => None,
    }
}

/// Whether a PyTorch allocator message is complete.
fn alloc_completeness(m: &str) -> Completeness {
    if m.contains(".html#")
        || m.contains("empty_cache")
        || m.contains("cached)")
        || m.contains("inactive)")
        || m.contains("Memory Management and PYTORCH_CUDA_ALLOC_CONF")
        || PT_1EB.is_match(m)
        || PT_PREEMPT.is_match(m)
    {
        return Completeness::Complete;
    }
    if m.contains("If reserved") {
        return Completeness::Incomplete; // the hint started and has not ended
    }
    let t = m.trim_end().trim_end_matches("</td>").trim_end_matches('.');
    if t.ends_with("reserved by PyTorch but unallocated")
        || t.ends_with("reserved in total by PyTorch)")
    {
        return Completeness::MaybeMore;
    }
    if m.contains("reserved by PyTorch but unallocated")
        || m.contains("reserved in total by PyTorch)")
    {
        return Completeness::Complete; // the user's own text follows the numbers
    }
    Completeness::Incomplete
}

fn is_hint_continuation(s: &str) -> bool {
    let t = s.trim_start();
    [
        "If reserved",
        "fragmentation",
        "PYTORCH_",
        "(https",
        "See documentation",
        "Memory Management",
        "max_split_size_mb",
    ]
    .iter()
    .any(|p| t.starts_with(p))
}

/// Reads the fields of a PyTorch allocator message; returns the event, the version clues and
/// how many fields were found (to pick the better of two ways of joining wrapped lines).
fn alloc_fields(m: &str, line: u64) -> (OomEvent, Versions, usize) {
    let trig = PT_TRIGGER.captures(m);
    let backend = trig.as_ref().map(|c| c[1].to_string()).unwrap_or_default();
    let kind = match backend.as_str() {
        "HIP" => OomKind::HipOom,
        "XPU" => OomKind::XpuOom,
        _ => OomKind::CudaOom,
    };
    let dev_prefix = backend.to_ascii_lowercase();
    let mut ev = OomEvent::new(kind, line);
    ev.message = message_of(m);
    let mut ver = Versions::default();
    let mut n = 0usize;
    let w = &mut ev.warnings;

    if let Some(c) = PT_TRIED.captures(m) {
        ev.requested_bytes = sz(w, "requested_bytes", &c, 1);
        n += 1;
    } else if PT_1EB.is_match(m) {
        ev.requested_bytes = Some(1 << 60); // "more than 1EB": size >= 1152921504606846976
        ver.wording(Some(v(1, 9)), None);
        n += 1;
    } else if let Some(c) = PT_PREEMPT.captures(m) {
        ev.requested_bytes = sz(w, "requested_bytes", &c, 1);
        ev.error = Some("preemptively rejected: per_process_memory_fraction".into());
        ver.wording(Some(v(2, 12)), None);
        n += 1;
    }
    let new_style = PT_NEW_GPU.captures(m);
    if let Some(c) = &new_style {
        n += 1;
        ev.device = match (c.get(1), c.get(2)) {
            (Some(d), _) => Some(format!("{dev_prefix}:{}", d.as_str())),
            (None, Some(b)) => {
                ver.wording(Some(v(2, 3)), Some(v(2, 4)));
                b.as_str()
                    .bytes()
                    .next()
                    .map(|x| format!("{dev_prefix}:{x}"))
            }
            (None, None) => {
                ver.wording(Some(v(2, 3)), Some(v(2, 4)));
                None
            }
        };
        ev.total_capacity_bytes = sz(w, "total_capacity_bytes", c, 4);
        if c[3].is_empty() {
            ver.wording(Some(v(2, 1)), Some(v(2, 2))); // "capacty": 2.1.x only
        } else if kind == OomKind::CudaOom || kind == OomKind::HipOom {
            ver.wording(Some(v(2, 2)), None);
        }
        if let Some(f) = PT_NEW_FREE.captures(m) {
            ev.free_bytes = sz(w, "free_bytes", &f, 1);
            n += 1;
        }
        if let Some(p) = PT_THIS_PROC.captures(m) {
            ev.process_in_use_bytes = sz(w, "process_in_use_bytes", &p, 1);
            n += 1;
        }
        for p in PT_PROC.captures_iter(m) {
            if let Ok(pid) = p[1].parse() {
                let bytes = sz(w, "other_processes.bytes", &p, 2);
                ev.other_processes.push(OtherProcess { pid, bytes });
                n += 1;
            }
        }
        if let Some(a) = PT_ALLOWED.captures(m) {
            ev.allowed_bytes = sz(w, "allowed_bytes", &a, 1);
            if kind != OomKind::XpuOom {
                ver.wording(Some(v(2, 5)), None);
            }
            n += 1;
        }
        if let Some(a) = PT_NEW_ALLOC.captures(m) {
            ev.allocated_bytes = sz(w, "allocated_bytes", &a, 1);
            n += 1;
        }
        if let Some(p) = PT_PRIVATE.captures(m) {
            ev.private_pool_bytes = sz(w, "private_pool_bytes", &p, 1);
            ver.wording(Some(v(2, 4)), None);
            n += 1;
        }
        if let Some(u) = PT_UNALLOC.captures(m) {
            ev.reserved_unallocated_bytes = sz(w, "reserved_unallocated_bytes", &u, 1);
            n += 1;
        }
        if let (Some(a), Some(u)) = (ev.allocated_bytes, ev.reserved_unallocated_bytes) {
            ev.reserved_bytes = Some(a.saturating_add(u));
        }
        // the hint names the release (oom-formats.md §2c-§2g)
        if m.contains("try setting max_split_size_mb") {
            ver.wording(None, Some(v(2, 2)));
        }
        if m.contains("docs.pytorch.org") {
            ver.wording(Some(v(2, 11)), None);
        } else if m.contains("notes/cuda.html#environment-variables") {
            if m.contains(" PYTORCH_ALLOC_CONF=") {
                ver.wording(Some(v(2, 10)), Some(v(2, 11)));
            } else if m.contains("PYTORCH_CUDA_ALLOC_CONF=")
                || m.contains("PYTORCH_HIP_ALLOC_CONF=")
            {
                ver.wording(Some(v(2, 2)), Some(v(2, 10)));
            } else {
                ver.wording(Some(v(2, 2)), Some(v(2, 11)));
            }
        }
    } else {
        if let Some(c) = PT_OLD_GPU.captures(m) {
            ev.device = Some(format!("{dev_prefix}:{}", &c[1]));
            n += 1;
        }
        if let Some(c) = PT_OLD_TOTAL.captures(m) {
            ev.total_capacity_bytes = sz(w, "total_capacity_bytes", &c, 1);
            n += 1;
        }
        if let Some(c) = PT_OLD_ALLOC.captures(m) {
            ev.allocated_bytes = sz(w, "allocated_bytes", &c, 1);
            n += 1;
        }
        if let Some(c) = PT_OLD_FREE.captures(m) {
            ev.free_bytes = sz(w, "free_bytes", &c, 1);
            n += 1;
        }
        if let Some(a) = PT_ALLOWED.captures(m) {
            ev.allowed_bytes = sz(w, "allowed_bytes", &a, 1);
            ver.wording(Some(v(1, 8)), None);
            n += 1;
        }
        if let Some(c) = PT_OLD_RESERVED.captures(m) {
            ev.reserved_bytes = sz(w, "reserved_bytes", &c, 1);
            n += 1;
            if m.contains("If reserved memory is >> allocated memory") {
                ver.wording(Some(v(1, 10)), Some(v(2, 1)));
            } else {
                let after = &m[c.get(0).map(|x| x.end()).unwrap_or(0)..];
                let rest = after.trim_start_matches(')').trim();
                if rest.is_empty() || rest == "." || rest.starts_with('<') {
                    ver.wording(Some(v(1, 4)), Some(v(1, 10))); // no hint before 1.10
                } else {
                    ver.wording(Some(v(1, 4)), Some(v(2, 1)));
                }
            }
            if let (Some(r), Some(a)) = (ev.reserved_bytes, ev.allocated_bytes) {
                ev.reserved_unallocated_bytes = Some(r.saturating_sub(a));
            }
        } else if let Some(c) = PT_OLD_CACHED.captures(m) {
            // <= 1.3 printed `cached - allocated` as "cached": the cache's free part
            ev.reserved_unallocated_bytes = sz(w, "reserved_unallocated_bytes", &c, 1);
            if let (Some(u), Some(a)) = (ev.reserved_unallocated_bytes, ev.allocated_bytes) {
                ev.reserved_bytes = Some(a.saturating_add(u));
            }
            ver.wording(None, Some(v(1, 4)));
            n += 1;
        }
        if kind == OomKind::XpuOom && m.contains("out of memory, please use") {
            n += 1;
        }
    }
    if let Some(c) = PT_CLASS.captures(m) {
        match &c[1] {
            "torch.cuda.OutOfMemoryError" => ver.class(Some(v(1, 13)), Some(v(2, 4))),
            "torch.OutOfMemoryError" => ver.class(Some(v(2, 4)), None),
            "RuntimeError" if kind == OomKind::CudaOom => ver.class(None, Some(v(1, 13))),
            "OutOfMemoryError" => ver.class(Some(v(1, 13)), None),
            _ => {}
        }
    }
    (ev, ver, n)
}

/// Bytes of a TensorFlow tensor: elements x the dtype's size.
fn tensor_bytes(shape: &str, dtype: &str) -> Option<u64> {
    // TensorFlow DataTypeString names (tensorflow/core/framework/types.cc)
    let elem: u64 = match dtype {
        "float" | "int32" | "uint32" | "qint32" => 4,
        "double" | "int64" | "uint64" | "complex64" => 8,
        "half" | "bfloat16" | "int16" | "uint16" | "qint16" | "quint16" => 2,
        "int8" | "uint8" | "bool" | "qint8" | "quint8" => 1,
        "complex128" => 16,
        _ => return None,
    };
    let mut n: u64 = 1;
    for d in shape.split(',') {
        let d: u64 = d.trim().parse().ok()?;
        n = n.checked_mul(d)?;
    }
    n.checked_mul(elem)
}

fn basename(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// The event's message line: without prefixes, trimmed, at most `MESSAGE_CHARS` characters.
fn message_of(text: &str) -> String {
    let t = strip_prefix(text).trim();
    let t = t.trim_matches(['`', '*']).trim();
    let mut s: String = t
        .chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .take(MESSAGE_CHARS)
        .collect();
    if t.chars().count() > MESSAGE_CHARS {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<OomEvent> {
        let mut p = Parser::new();
        for (i, l) in text.lines().enumerate() {
            p.line(i as u64 + 1, l.as_bytes());
        }
        p.finish().events
    }

    #[test]
    fn tensor_sizes() {
        assert_eq!(tensor_bytes("8,64,224,224", "float"), Some(102_760_448));
        assert_eq!(tensor_bytes("", "float"), None);
    }

    #[test]
    fn wrapped_message_is_joined() {
        let log = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 250.00 MiB. GPU 0 has a total capacity of 79.19 GiB of which 2.07\n\
                   GiB is free. Including non-PyTorch memory, this process has 77.11 GiB memory in use. 75.23 GiB allowed; Of the allocated memory 74.23 GiB is allocated by PyTorch, and 943.54 MiB is reserved by PyTorch but\n\
                   unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid\n\
                   fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n\
                   next line\n";
        let ev = parse(log);
        assert_eq!(ev.len(), 1);
        let e = &ev[0];
        assert_eq!(e.free_bytes, parse_value("2.07", "GiB").ok());
        assert_eq!(
            e.reserved_unallocated_bytes,
            parse_value("943.54", "MiB").ok()
        );
        assert_eq!(e.framework_versions.as_deref(), Some(">=2.5,<2.10"));
    }

    #[test]
    fn repeated_message_is_one_event() {
        let m = "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 6.00 GiB total capacity; 4.22 GiB already allocated; 0 bytes free; 4.24 GiB reserved in total by PyTorch)";
        let log = format!("{m}\nsome traceback\n{m}\n");
        assert_eq!(parse(&log).len(), 1);
        let log2 = format!("{m}\n{}", m.replace("20.00 MiB", "40.00 MiB"));
        assert_eq!(parse(&log2).len(), 2);
    }
}
