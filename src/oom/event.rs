//! The data an out-of-memory event carries: what the message said (sizes as integer bytes, exactly
//! as printed), what follows from it (derived figures) and the diagnosis (cause and advice).
//! `--format json` of `oomdoc diagnose` is the serde form of [`Report`]; field names are a contract.
use serde::{Deserialize, Serialize};

use super::analysis::{Advice, Cause};

/// The message family an event was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OomKind {
    /// PyTorch CUDA caching allocator: `CUDA out of memory. Tried to allocate ...`.
    CudaOom,
    /// The same message from a ROCm build: `HIP out of memory. ...`.
    HipOom,
    /// Intel GPUs: `XPU out of memory. ...`.
    XpuOom,
    /// Apple GPUs: `MPS backend out of memory (...)`.
    MpsOom,
    /// `PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync`: `Allocation on device N would exceed allowed memory`.
    CudaMallocAsyncOom,
    /// A raw CUDA runtime error outside the caching allocator: `CUDA error: out of memory`.
    CudaErrorOom,
    /// PyTorch's CPU allocator: `DefaultCPUAllocator: can't allocate memory`.
    CpuAlloc,
    /// cuBLAS (and cuSOLVER/cuSPARSE/cuFFT) could not allocate its handle or workspace.
    CublasAlloc,
    /// cuDNN allocation failures and their symptoms (no algorithm fits the workspace).
    CudnnAlloc,
    /// NCCL: `Cuda failure 'out of memory'`.
    NcclOom,
    /// JAX / XLA: `RESOURCE_EXHAUSTED: Out of memory while trying to allocate N bytes`.
    XlaOom,
    /// TensorFlow: BFC allocator `ran out of memory` / `OOM when allocating tensor`.
    TfOom,
    /// The Linux kernel's OOM killer (dmesg), a cgroup limit, or SLURM's oom_kill report.
    HostOomKiller,
    /// `DataLoader worker (pid N) is killed by signal: Killed.` (host RAM).
    DataloaderKilled,
    /// A DataLoader worker died of a bus error: `/dev/shm` is full.
    DataloaderShm,
    /// torchrun / elastic: a worker ended with exit code -9 (SIGKILL).
    TorchrunSigkill,
}

impl OomKind {
    /// The JSON name of the kind (`cuda_oom`, ...).
    pub fn name(self) -> &'static str {
        match self {
            OomKind::CudaOom => "cuda_oom",
            OomKind::HipOom => "hip_oom",
            OomKind::XpuOom => "xpu_oom",
            OomKind::MpsOom => "mps_oom",
            OomKind::CudaMallocAsyncOom => "cuda_malloc_async_oom",
            OomKind::CudaErrorOom => "cuda_error_oom",
            OomKind::CpuAlloc => "cpu_alloc",
            OomKind::CublasAlloc => "cublas_alloc",
            OomKind::CudnnAlloc => "cudnn_alloc",
            OomKind::NcclOom => "nccl_oom",
            OomKind::XlaOom => "xla_oom",
            OomKind::TfOom => "tf_oom",
            OomKind::HostOomKiller => "host_oom_killer",
            OomKind::DataloaderKilled => "dataloader_killed",
            OomKind::DataloaderShm => "dataloader_shm",
            OomKind::TorchrunSigkill => "torchrun_sigkill",
        }
    }

    /// Whether the memory that ran out is host RAM (or shared memory) rather than a device's.
    pub fn is_host(self) -> bool {
        matches!(
            self,
            OomKind::CpuAlloc
                | OomKind::HostOomKiller
                | OomKind::DataloaderKilled
                | OomKind::DataloaderShm
                | OomKind::TorchrunSigkill
        )
    }
}

/// A process the message names as holding memory on the same GPU (NVML's list in PyTorch >= 2.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherProcess {
    pub pid: u64,
    /// Absent when NVML printed "not available" (17179869184.00 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// One out-of-memory failure found in a log. Every `Option` is absent (not serialised) when the
/// message does not give it. Sizes are bytes: the printed value times its unit, rounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OomEvent {
    pub kind: OomKind,
    /// 1-based line of the event's first line.
    pub line: u64,
    /// `cuda:0`, `hip:1`, `xpu:0`, `mps`, `gpu:0` (TensorFlow/XLA), `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Distributed rank read off a line prefix (`[rank3]:`, `[default3]:`, `(VllmWorker rank=3 ...)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u64>,
    /// The message's first line, cleaned (prefixes, colours and escapes removed), at most 300 characters.
    pub message: String,

    /// The size the allocator tried to get (PyTorch prints the rounded segment size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_capacity_bytes: Option<u64>,
    /// Free on the device when the failure happened (`cudaMemGetInfo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// All memory of this process on the device, PyTorch's and everything else's (NVML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_in_use_bytes: Option<u64>,
    /// The per-process cap (`set_per_process_memory_fraction`, MPS high watermark, BFC limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_bytes: Option<u64>,
    /// Held by live tensors (new style: including private pools, as printed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_bytes: Option<u64>,
    /// Total reserved by the framework's cache (new style: allocated + reserved-unallocated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_unallocated_bytes: Option<u64>,
    /// Allocated in private pools (CUDA graphs), PyTorch >= 2.4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_pool_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_processes: Vec<OtherProcess>,
    /// MPS: `other allocations` (Metal memory outside PyTorch's MPS allocator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_allocations_bytes: Option<u64>,
    /// MPS pool (`shared` / `private`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The framework versions whose exact wording this is, e.g. `>=2.5,<2.10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_versions: Option<String>,

    /// Library status (`CUBLAS_STATUS_ALLOC_FAILED`, ...) or symptom text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The library call that failed (`cublasCreate(handle)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// TensorFlow tensor shape (`[8,64,224,224]`) or XLA shape of the largest buffer (`f32[5104,257152]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_shape: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Size of that tensor: elements x dtype size (computed; TensorFlow prints only the shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_bytes: Option<u64>,
    /// XLA: size of the largest buffer at the peak (`Peak buffers: Buffer 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_buffer_bytes: Option<u64>,
    /// Source location the message names (XLA `source_file:line`, PyTorch `[enforce fail at ...]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The op or allocator that failed (TensorFlow `requested by op X`, allocator `GPU_0_bfc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocator: Option<String>,

    /// Host side: the killed process (or DataLoader worker, or torchrun worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
    /// Kernel OOM killer: the process whose allocation invoked it (not necessarily the victim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
    /// Kernel OOM killer constraint (`CONSTRAINT_MEMCG` = a cgroup/container limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_vm_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anon_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shmem_rss_bytes: Option<u64>,
    /// `Killed`, `Bus error`, `SIGKILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rank: Option<u64>,

    /// In use by the process but not reserved by the framework: CUDA context, other libraries
    /// (process_in_use - reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_framework_bytes: Option<u64>,
    /// reserved_unallocated / reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragmentation_share: Option<f64>,
    /// requested - free (free = min(free, allowed - reserved) when a cap is printed); 0 when the
    /// request was smaller than that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall_bytes: Option<u64>,

    /// The likely cause.
    pub cause: Cause,
    /// Other causes that add to this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contributing: Vec<Cause>,
    /// What to try, first first; each item carries the numbers it is about.
    pub advice: Vec<Advice>,
    /// Problems reading the message (e.g. a size too large for 64 bits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl OomEvent {
    /// An empty event of a kind at a line; everything else absent.
    pub fn new(kind: OomKind, line: u64) -> OomEvent {
        OomEvent {
            kind,
            line,
            device: None,
            rank: None,
            message: String::new(),
            requested_bytes: None,
            total_capacity_bytes: None,
            free_bytes: None,
            process_in_use_bytes: None,
            allowed_bytes: None,
            allocated_bytes: None,
            reserved_bytes: None,
            reserved_unallocated_bytes: None,
            private_pool_bytes: None,
            other_processes: Vec::new(),
            other_allocations_bytes: None,
            pool: None,
            framework_versions: None,
            error: None,
            call: None,
            tensor_shape: None,
            dtype: None,
            tensor_bytes: None,
            largest_buffer_bytes: None,
            source: None,
            op: None,
            allocator: None,
            pid: None,
            process_name: None,
            invoked_by: None,
            constraint: None,
            total_vm_bytes: None,
            anon_rss_bytes: None,
            file_rss_bytes: None,
            shmem_rss_bytes: None,
            signal: None,
            exit_code: None,
            local_rank: None,
            non_framework_bytes: None,
            fragmentation_share: None,
            shortfall_bytes: None,
            cause: Cause::Unknown,
            contributing: Vec::new(),
            advice: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Memory the process could still have used: the device's free memory, or less when a
    /// per-process cap leaves less (`allowed - reserved`).
    pub fn headroom_bytes(&self) -> Option<u64> {
        let cap_left = self.allowed_bytes.map(|a| {
            let used = self
                .reserved_bytes
                .or(self.allocated_bytes)
                .unwrap_or(0)
                .saturating_add(self.other_allocations_bytes.unwrap_or(0));
            a.saturating_sub(used)
        });
        match (self.free_bytes, cap_left) {
            (Some(f), Some(c)) => Some(f.min(c)),
            (f, c) => f.or(c),
        }
    }

    /// The memory limit this process ran into: the cap when one is printed, else the card.
    pub fn limit_bytes(&self) -> Option<u64> {
        match (self.allowed_bytes, self.total_capacity_bytes) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        }
    }

    /// Fills the derived figures from the printed ones.
    pub fn derive(&mut self) {
        if let (Some(p), Some(r)) = (self.process_in_use_bytes, self.reserved_bytes) {
            self.non_framework_bytes = Some(p.saturating_sub(r));
        }
        if let (Some(u), Some(r)) = (self.reserved_unallocated_bytes, self.reserved_bytes) {
            if r > 0 {
                self.fragmentation_share = Some(round4(u as f64 / r as f64));
            }
        }
        if let (Some(req), Some(h)) = (self.requested_bytes, self.headroom_bytes()) {
            self.shortfall_bytes = Some(req.saturating_sub(h));
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Everything `diagnose` found in one input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub events: Vec<OomEvent>,
    /// Problems with the input as a whole (e.g. more events than are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Lines read.
    #[serde(skip)]
    pub lines: u64,
    /// Bytes read (after decompression).
    #[serde(skip)]
    pub bytes: u64,
}
