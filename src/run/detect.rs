//! Out-of-memory detection in a child's output, one line at a time.
//!
//! This is a small built-in check for the main message families of
//! `reference/oom-formats.md` (PyTorch CUDA/HIP/XPU/MPS allocator messages, the raw
//! `CUDA error: out of memory`, cuBLAS/cuDNN allocation failures, NCCL, XLA/TensorFlow,
//! the host-side kills: DataLoader workers, the Linux OOM killer, a shell's `Killed`, torchrun's
//! exit code -9). `run` and `fit` call only [`find_oom`], [`line_is_oom`] and [`exit_suggests_oom`],
//! so a fuller log parser can take their place behind the same signatures.

/// Fragments that mark an out-of-memory line, compared in lower case. Sources: the message
/// texts quoted in `reference/oom-formats.md` sections 2-5.
const MARKERS: &[&str] = &[
    // PyTorch caching allocators (c10/cuda/CUDACachingAllocator.cpp and its HIP/XPU copies).
    "cuda out of memory",
    "hip out of memory",
    "xpu out of memory",
    // torch.OutOfMemoryError / torch.cuda.OutOfMemoryError, and Python's MemoryError is not matched.
    "outofmemoryerror",
    // MPSAllocator.mm
    "mps backend out of memory",
    // Raw runtime error via C10_CUDA_CHECK (RuntimeError / torch.AcceleratorError).
    "cuda error: out of memory",
    // cudaMallocAsync backend.
    "would exceed allowed memory. (out of memory)",
    // cuBLAS / cuDNN / cuFFT / cuSOLVER allocation failures.
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cufft_alloc_failed",
    "cusolver_status_alloc_failed",
    // NCCL's own log: Cuda failure 'out of memory' / Cuda failure 2 'out of memory'.
    "'out of memory'",
    // c10 CPU allocator (alloc_cpu.cpp).
    "defaultcpuallocator: can't allocate memory",
    "defaultcpuallocator: not enough memory",
    // XLA / TensorFlow BFC.
    "resource_exhausted: out of memory",
    "oom when allocating tensor",
    "ran out of memory trying to allocate",
    // DataLoader workers killed or crashed (torch/csrc/DataLoader.cpp, dataloader.py).
    "dataloader worker (pid",
    // Linux OOM killer (mm/oom_kill.c), plain and cgroup.
    "out of memory: killed process",
    "invoked oom-killer",
    // SLURM.
    "oom_kill event",
    // torchrun / elastic: a rank killed by SIGKILL.
    "exitcode: -9",
    "signal 9 (sigkill) received",
];

/// True when one line of output reports an out-of-memory failure (or a host-side kill that is
/// almost always one).
pub fn line_is_oom(line: &str) -> bool {
    let t = line.trim();
    if t.is_empty() {
        return false;
    }
    // A shell's report of a SIGKILLed job: "Killed", or bash's "line 1: 1234 Killed  python ...".
    if t == "Killed" || t.contains(" Killed ") && t.contains("line ") {
        return true;
    }
    let lower = t.to_ascii_lowercase();
    MARKERS.iter().any(|m| lower.contains(m))
}

/// The first line of `text` that reports an out-of-memory failure, trimmed.
pub fn find_oom(text: &str) -> Option<String> {
    text.lines()
        .find(|l| line_is_oom(l))
        .map(|l| l.trim().to_string())
}

/// True when a child's end suggests the kernel's OOM killer: killed by SIGKILL, or exit code
/// 137 (128 + 9, how shells and container runtimes report a SIGKILLed process).
pub fn exit_suggests_oom(code: Option<i32>, signal: Option<i32>) -> bool {
    signal == Some(libc::SIGKILL) || code == Some(137)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_main_families() {
        let lines = [
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 194.00 MiB. GPU 0 has a total capacity of 79.18 GiB",
            "RuntimeError: CUDA error: out of memory",
            "torch.AcceleratorError: CUDA error: out of memory",
            "RuntimeError: DataLoader worker (pid 19597) is killed by signal: Killed.",
            "Killed",
            "bash: line 1: 4242 Killed                  python train.py",
            "RuntimeError: MPS backend out of memory (MPS allocated: 1.2 GB, other allocations: 3 MB)",
            "ERROR:torch.distributed.elastic.multiprocessing.api:failed (exitcode: -9) local_rank: 3 (pid: 812917)",
            "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
            "[12345.6] Out of memory: Killed process 4242 (python) total-vm:1kB",
        ];
        for l in lines {
            assert!(line_is_oom(l), "{l}");
        }
    }

    #[test]
    fn ignores_ordinary_output() {
        for l in [
            "step 10/100 loss 2.31",
            "Epoch 1: 100%|██████████| 10/10",
            "",
            "killed two birds",
            "memory: 12.3 GiB allocated",
        ] {
            assert!(!line_is_oom(l), "{l}");
        }
    }

    #[test]
    fn find_returns_the_line() {
        let text = "step 1\nstep 2\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\nmore";
        assert_eq!(
            find_oom(text).as_deref(),
            Some("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
        );
        assert_eq!(find_oom("all good\n"), None);
    }

    #[test]
    fn sigkill_and_137() {
        assert!(exit_suggests_oom(None, Some(9)));
        assert!(exit_suggests_oom(Some(137), None));
        assert!(!exit_suggests_oom(Some(1), None));
    }
}
