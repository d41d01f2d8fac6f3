//! Generated messages for every format variant (as the framework builds them, sizes formatted
//! like PyTorch's `format_size` / MPS / TSL) read back by the parser: the kind, every field and
//! the version range must come back; sizes within the printing precision of the original.
//! Then the same messages with real-log noise (rank prefixes, timestamps, ANSI colours, HTML
//! escapes, CRLF, hard wrapping) must give the same fields. And arbitrary bytes never panic.
use oomdoc::oom::size::{format_size, format_size_mps_legacy, format_tsl, parse_size};
use oomdoc::oom::{parse_bytes, parse_reader, parse_str, OomEvent, OomKind};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Half of the last printed digit of `format_size(x)`.
fn tolerance(x: u64) -> u64 {
    if x <= 1024 {
        0
    } else if x <= MIB {
        6
    } else if x <= GIB {
        MIB / 200 + 1
    } else {
        GIB / 200 + 1
    }
}

fn close(got: Option<u64>, want: u64, what: &str) {
    let g = got.unwrap_or_else(|| panic!("{what}: absent"));
    assert!(
        g.abs_diff(want) <= tolerance(want),
        "{what}: got {g}, want {want} (printed {})",
        format_size(want)
    );
    // and exactly the printed value
    assert_eq!(Some(g), parse_size(&format_size(want)).ok(), "{what}");
}

fn one(text: &str) -> OomEvent {
    let ev = parse_str(text);
    assert_eq!(ev.len(), 1, "events in {text:?}: {ev:#?}");
    ev.into_iter().next().unwrap()
}

#[derive(Clone, Debug)]
struct Sizes {
    req: u64,
    total: u64,
    free: u64,
    in_use: u64,
    allocated: u64,
    unalloc: u64,
    private: u64,
    allowed: u64,
    other_pid: u64,
    other: u64,
}

fn sizes() -> impl Strategy<Value = Sizes> {
    (
        0u64..200 * GIB,
        GIB..200 * GIB,
        0u64..100 * GIB,
        0u64..100 * GIB,
        0u64..100 * GIB,
        0u64..10 * GIB,
        1u64..GIB,
        GIB..100 * GIB,
        1u64..4_000_000,
        0u64..50 * GIB,
    )
        .prop_map(
            |(req, total, free, in_use, allocated, unalloc, private, allowed, other_pid, other)| {
                Sizes {
                    req,
                    total,
                    free,
                    in_use,
                    allocated,
                    unalloc,
                    private,
                    allowed,
                    other_pid,
                    other,
                }
            },
        )
}

/// The new-style message (2.1 - 2.14) as `c10::str` builds it.
fn new_style(s: &Sizes, release: &str, device: &str) -> String {
    let f = format_size;
    let class = match release {
        "2.1" | "2.2" | "2.3" => "torch.cuda.OutOfMemoryError",
        _ => "torch.OutOfMemoryError",
    };
    let capacity = if release == "2.1" {
        "capacty"
    } else {
        "capacity"
    };
    let procs = if release == "2.1" || release == "2.11" {
        format!(
            "Process {} has {} memory in use. Including non-PyTorch memory, this process has {} memory in use. ",
            s.other_pid,
            f(s.other),
            f(s.in_use)
        )
    } else {
        format!(
            "Including non-PyTorch memory, this process has {} memory in use. ",
            f(s.in_use)
        )
    };
    let allowed = if matches!(release, "2.5" | "2.11") {
        format!("{} allowed; ", f(s.allowed))
    } else {
        String::new()
    };
    let private = if matches!(release, "2.4" | "2.5" | "2.11") {
        format!(
            "with {} allocated in private pools (e.g., CUDA Graphs), ",
            f(s.private)
        )
    } else {
        String::new()
    };
    let hint = match release {
        "2.1" => " If reserved but unallocated memory is large try setting max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and PYTORCH_CUDA_ALLOC_CONF",
        "2.10" => " If reserved but unallocated memory is large try setting PYTORCH_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
        "2.11" => " If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)",
        _ => " If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
    };
    format!(
        "{class}: CUDA out of memory. Tried to allocate {}. GPU {device} has a total {capacity} of {} of which {} is free. {procs}{allowed}Of the allocated memory {} is allocated by PyTorch, {private}and {} is reserved by PyTorch but unallocated.{hint}",
        f(s.req),
        f(s.total),
        f(s.free),
        f(s.allocated),
        f(s.unalloc)
    )
}

fn check_new_style(ev: &OomEvent, s: &Sizes, release: &str) {
    assert_eq!(ev.kind, OomKind::CudaOom);
    close(ev.requested_bytes, s.req, "requested");
    close(ev.total_capacity_bytes, s.total, "total");
    close(ev.free_bytes, s.free, "free");
    close(ev.process_in_use_bytes, s.in_use, "in use");
    close(ev.allocated_bytes, s.allocated, "allocated");
    close(ev.reserved_unallocated_bytes, s.unalloc, "unallocated");
    assert_eq!(
        ev.reserved_bytes,
        Some(ev.allocated_bytes.unwrap() + ev.reserved_unallocated_bytes.unwrap())
    );
    if matches!(release, "2.5" | "2.11") {
        close(ev.allowed_bytes, s.allowed, "allowed");
    } else {
        assert_eq!(ev.allowed_bytes, None);
    }
    if matches!(release, "2.4" | "2.5" | "2.11") {
        close(ev.private_pool_bytes, s.private, "private");
    }
    if release == "2.1" || release == "2.11" {
        assert_eq!(ev.other_processes.len(), 1);
        assert_eq!(ev.other_processes[0].pid, s.other_pid);
        close(ev.other_processes[0].bytes, s.other, "other process");
    }
    let want = match release {
        "2.1" => ">=2.1,<2.2",
        "2.2" => ">=2.2,<2.4",
        "2.3" => ">=2.3,<2.4",
        "2.4" => ">=2.4,<2.10",
        "2.5" => ">=2.5,<2.10",
        "2.10" => ">=2.10,<2.11",
        "2.11" => ">=2.11",
        _ => unreachable!(),
    };
    assert_eq!(ev.framework_versions.as_deref(), Some(want), "{release}");
}

/// Real-log noise around a message; `wrap` hard-wraps it at spaces near 80 columns.
fn noisy(msg: &str, prefix: &str, ansi: bool, html: bool, crlf: bool, wrap: bool) -> String {
    let body = if html {
        msg.replace('&', "&amp;")
            .replace('>', "&gt;")
            .replace('<', "&lt;")
    } else {
        msg.to_string()
    };
    let body = if ansi {
        format!("\x1b[1;31m{body}\x1b[0m")
    } else {
        body
    };
    let lines: Vec<String> = if wrap {
        let mut out = vec![];
        let mut cur = String::new();
        for word in body.split(' ') {
            if cur.len() + word.len() > 80 && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            } else if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        out.push(cur);
        out
    } else {
        vec![body]
    };
    let eol = if crlf { "\r\n" } else { "\n" };
    let mut text = format!("some earlier output{eol}");
    for l in lines {
        text.push_str(prefix);
        text.push_str(&l);
        text.push_str(eol);
    }
    text.push_str(&format!("{eol}more output after{eol}"));
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn new_style_messages_round_trip(s in sizes(), r in 0usize..7) {
        let release = ["2.1", "2.2", "2.4", "2.5", "2.10", "2.11", "2.2"][r];
        let ev = one(&new_style(&s, release, "0"));
        check_new_style(&ev, &s, release);
        prop_assert_eq!(ev.device.as_deref(), Some("cuda:0"));
    }

    #[test]
    fn noise_does_not_change_the_fields(
        s in sizes(),
        p in 0usize..5,
        ansi in any::<bool>(),
        html in any::<bool>(),
        crlf in any::<bool>(),
        wrap in any::<bool>(),
    ) {
        let prefix = ["", "[rank3]: ", "[default3]:", "2025-11-14T08:52:38.3746210Z ", "(VllmWorker rank=3 pid=1090) ERROR 06-05 06:18:13 [multiproc_executor.py:470] "][p];
        let msg = new_style(&s, "2.5", "3");
        let text = noisy(&msg, prefix, ansi, html, crlf, wrap);
        let ev = one(&text);
        check_new_style(&ev, &s, "2.5");
        prop_assert_eq!(ev.line, 2);
        prop_assert_eq!(ev.device.as_deref(), Some("cuda:3"));
        if p == 1 || p == 2 || p == 4 {
            prop_assert_eq!(ev.rank, Some(3));
        }
    }

    #[test]
    fn old_style_messages_round_trip(s in sizes(), v in 0usize..4, allowed in any::<bool>()) {
        let f = format_size;
        let allowed_s = if allowed && v > 0 { format!("{} allowed; ", f(s.allowed)) } else { String::new() };
        let (tail, class, want) = match v {
            0 => (format!("{} cached)", f(s.unalloc)), "RuntimeError", "<1.4"),
            1 => (format!("{} reserved in total by PyTorch)", f(s.allocated + s.unalloc)), "RuntimeError", if allowed { ">=1.8,<1.10" } else { ">=1.4,<1.10" }),
            2 => (format!("{} reserved in total by PyTorch) If reserved memory is >> allocated memory try setting max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and PYTORCH_CUDA_ALLOC_CONF", f(s.allocated + s.unalloc)), "RuntimeError", ">=1.10,<1.13"),
            _ => (format!("{} reserved in total by PyTorch) If reserved memory is >> allocated memory try setting max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and PYTORCH_CUDA_ALLOC_CONF", f(s.allocated + s.unalloc)), "torch.cuda.OutOfMemoryError", ">=1.13,<2.1"),
        };
        let msg = format!("{class}: CUDA out of memory. Tried to allocate {} (GPU 1; {} total capacity; {} already allocated; {} free; {allowed_s}{tail}", f(s.req), f(s.total), f(s.allocated), f(s.free));
        let ev = one(&msg);
        prop_assert_eq!(ev.kind, OomKind::CudaOom);
        prop_assert_eq!(ev.device.as_deref(), Some("cuda:1"));
        close(ev.requested_bytes, s.req, "requested");
        close(ev.total_capacity_bytes, s.total, "total");
        close(ev.allocated_bytes, s.allocated, "allocated");
        close(ev.free_bytes, s.free, "free");
        if v == 0 {
            close(ev.reserved_unallocated_bytes, s.unalloc, "cached");
        } else {
            close(ev.reserved_bytes, s.allocated + s.unalloc, "reserved");
            if allowed {
                close(ev.allowed_bytes, s.allowed, "allowed");
            }
        }
        prop_assert_eq!(ev.framework_versions.as_deref(), Some(want));
    }

    #[test]
    fn mps_messages_round_trip(a in 0u64..64 * GIB, o in 0u64..64 * GIB, m in GIB..128 * GIB, x in 0u64..8 * GIB, legacy in any::<bool>(), watermark in any::<bool>()) {
        let f = if legacy { format_size_mps_legacy } else { format_size };
        let max = if watermark { format!(", max allowed: {}", f(m)) } else { String::new() };
        let hint = if watermark { " Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations (may cause system failure)." } else { "" };
        let msg = format!("RuntimeError: MPS backend out of memory (MPS allocated: {}, other allocations: {}{max}). Tried to allocate {} on private pool.{hint}", f(a), f(o), f(x));
        let ev = one(&msg);
        prop_assert_eq!(ev.kind, OomKind::MpsOom);
        close(ev.allocated_bytes, a, "allocated");
        close(ev.other_allocations_bytes, o, "other");
        close(ev.requested_bytes, x, "requested");
        if watermark { close(ev.allowed_bytes, m, "max allowed"); }
        prop_assert_eq!(ev.pool.as_deref(), Some("private"));
        let units_legacy = a > 1024; // `bytes` look the same in both
        if units_legacy || !legacy {
            let want = if legacy { "<2.8" } else { ">=2.8" };
            if a > 1024 { prop_assert_eq!(ev.framework_versions.as_deref(), Some(want)); }
        }
    }

    #[test]
    fn cuda_malloc_async_round_trips(s in sizes()) {
        let f = format_size;
        let msg = format!("torch.cuda.OutOfMemoryError: Allocation on device 2 would exceed allowed memory. (out of memory)\nCurrently allocated     : {}\nRequested               : {}\nDevice limit            : {}\nFree (according to CUDA): {}\nPyTorch limit (set by user-supplied memory fraction)\n                        : {}\nnext\n", f(s.allocated), f(s.req), f(s.total), f(s.free), f(s.allowed));
        let ev = one(&msg);
        prop_assert_eq!(ev.kind, OomKind::CudaMallocAsyncOom);
        prop_assert_eq!(ev.device.as_deref(), Some("cuda:2"));
        close(ev.allocated_bytes, s.allocated, "allocated");
        close(ev.requested_bytes, s.req, "requested");
        close(ev.total_capacity_bytes, s.total, "limit");
        close(ev.free_bytes, s.free, "free");
        close(ev.allowed_bytes, s.allowed, "pytorch limit");
    }

    #[test]
    fn tsl_sizes_round_trip(n in 0u64..1 << 50, rounded in 0u64..1 << 40) {
        let msg = format!("2024-05-28 07:02:44.349554: W external/tsl/tsl/framework/bfc_allocator.cc:482] Allocator (GPU_1_bfc) ran out of memory trying to allocate {} (rounded to {rounded})requested by op MatMul", format_tsl(n));
        let ev = one(&msg);
        prop_assert_eq!(ev.kind, OomKind::XlaOom);
        prop_assert_eq!(ev.requested_bytes, Some(rounded));
        prop_assert_eq!(ev.device.as_deref(), Some("gpu:1"));
        prop_assert_eq!(ev.op.as_deref(), Some("MatMul"));
        // the printed TSL size reads back to within its last digit
        let printed = format_tsl(n);
        let back = parse_size(&printed).unwrap();
        let unit = if n < 1024 { 1 } else { let mut u = 1024u64; let mut m = n; while m >= 1 << 20 { m /= 1024; u *= 1024; } u };
        prop_assert!(back.abs_diff(n) <= unit / 100 + unit / 200 + 1, "{} -> {}", n, back);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse_bytes(&data);
        let _ = parse_reader(std::io::Cursor::new(&data));
    }

    #[test]
    fn arbitrary_lines_of_message_fragments_never_panic(parts in proptest::collection::vec((0usize..FRAGMENTS.len(), "[ -~\u{80}-\u{10ffff}]{0,12}"), 0..40)) {
        let mut text = String::new();
        for (i, noise) in parts {
            text.push_str(FRAGMENTS[i]);
            text.push_str(&noise);
            text.push('\n');
        }
        let a = parse_str(&text);
        let b = parse_reader(std::io::Cursor::new(text.as_bytes())).map(|r| r.events).unwrap_or_default();
        prop_assert_eq!(a.len(), b.len());
    }
}

/// Pieces of every family, for the state-machine stress test.
const FRAGMENTS: &[&str] = &[
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 23.55 GiB of which",
    "12.00 MiB is free. Of the allocated memory 1.00 GiB is allocated by PyTorch, and",
    "If reserved but unallocated memory is large",
    "RuntimeError: CUDA out of memory.",
    "Allocation on device 0 would exceed allowed memory. (out of memory)",
    "Currently allocated     : 1.00 GiB",
    "PyTorch limit (set by user-supplied memory fraction)",
    "                        : 17179869184.00 GiB",
    "RuntimeError: CUDA error: out of memory",
    "CUDA kernel errors might be asynchronously reported at some other API call,so the stacktrace below might be incorrect.",
    "W bfc_allocator.cc:479] Allocator (GPU_0_bfc) ran out of memory trying to allocate 560.44MiB (rounded to 587661312)requested by op X",
    "I bfc_allocator.cc:1040] Stats: ",
    "Limit:            12345",
    "Peak buffers:",
    "\t\tSize: 4.89GiB",
    "ResourceExhaustedError: 2 root error(s) found.",
    "  (0) Resource exhausted: OOM when allocating tensor with shape[8,64] and type float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc",
    "ValueError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2110783616 bytes.",
    "x invoked oom-killer: gfp_mask=0x0",
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),task=python,pid=12,uid=0",
    "Out of memory: Killed process 12 (python) total-vm:1kB, anon-rss:2kB, file-rss:3kB, shmem-rss:4kB",
    "oom_reaper: reaped process 12 (python)",
    "RuntimeError: DataLoader worker (pid 7) is killed by signal: Killed.",
    "ERROR: Unexpected bus error encountered in worker.",
    "failed (exitcode: -9) local_rank: 0 (pid: 5) of binary: python",
    "x:1:2 [0] enqueue.cc:1 NCCL WARN Cuda failure 'out of memory'",
    "MPS backend out of memory (MPS allocated: 1.00 GB, other allocations: 2.00 GB, max allowed: 3.00 GB). Tried to allocate 4.00 MB on shared pool.",
    "&gt;&gt; \x1b[31m",
    "",
    "GPU \u{0} has a total capacity of 1.00 GiB",
];

#[test]
fn every_family_is_recognised() {
    let cases: &[(&str, OomKind)] = &[
        ("torch.OutOfMemoryError: HIP out of memory. Tried to allocate 16.00 GiB. GPU 0 has a total capacity of 15.24 GiB of which 15.09 GiB is free. Of the allocated memory 0 bytes is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated.", OomKind::HipOom),
        ("torch.OutOfMemoryError: XPU out of memory. Tried to allocate 4.66 GiB. GPU 0 has a total capacity of 5.65 GiB of which 5.65 GiB is free. Of the allocated memory 195.50 KiB is allocated by PyTorch, and 1.81 MiB is reserved by PyTorch but unallocated. Please use `empty_cache` to release all unoccupied cached memory.", OomKind::XpuOom),
        ("XPU out of memory, please use `empty_cache` to release all unoccupied cached memory.", OomKind::XpuOom),
        ("torch.OutOfMemoryError: CUDA out of memory. Allocation was preemptively rejected because it would exceed per_process_memory_fraction limit. Requested size: 2.00 GiB", OomKind::CudaOom),
        ("RuntimeError: CUDA out of memory. Tried to allocate more than 1EB memory.", OomKind::CudaOom),
        ("torch.AcceleratorError: CUDA error: out of memory", OomKind::CudaErrorOom),
        ("RuntimeError: [enforce fail at alloc_cpu.cpp:75] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 132426121216 bytes. Error code 12 (Cannot allocate memory)", OomKind::CpuAlloc),
        ("$ Torch: not enough memory: you tried to allocate 72GB. Buy new RAM!", OomKind::CpuAlloc),
        ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", OomKind::CublasAlloc),
        ("RuntimeError: cusolver error: CUSOLVER_STATUS_ALLOC_FAILED, when calling `cusolverDnCreate(handle)`", OomKind::CublasAlloc),
        ("RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED", OomKind::CudnnAlloc),
        ("RuntimeError: Unable to find a valid cuDNN algorithm to run convolution", OomKind::CudnnAlloc),
        ("host:123:456 [1] enqueue.cc:1085 NCCL WARN Cuda failure 2 'out of memory'", OomKind::NcclOom),
        ("[rank7]: Cuda failure 2 'out of memory'", OomKind::NcclOom),
        ("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Failed to allocate request for 154.06GiB (165425291480B) on device ordinal 0", OomKind::XlaOom),
        ("tensorflow.python.framework.errors_impl.ResourceExhaustedError: {{function_node __wrapped__Mul}} OOM when allocating tensor with shape[1024,1024,64] and type float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc [Op:Mul]", OomKind::TfOom),
        ("2023-04-23 01:00:06.362905: I tensorflow/stream_executor/cuda/cuda_driver.cc:733] failed to allocate 8.41G (9029127168 bytes) from device: CUDA_ERROR_OUT_OF_MEMORY: out of memory", OomKind::TfOom),
        ("[Sun Mar 30 08:24:00 2025] Memory cgroup out of memory: Killed process 4242 (python3) total-vm:1,234,567kB, anon-rss:7,654,321kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:100kB oom_score_adj:0", OomKind::HostOomKiller),
        ("Out of memory: Kill process 999 (python) score 900 or sacrifice child\nKilled process 1000 (python) total-vm:10kB, anon-rss:20kB, file-rss:30kB", OomKind::HostOomKiller),
        ("slurmstepd: error: Detected 1 oom_kill event in StepId=123.0. Some of the step tasks have been OOM Killed.", OomKind::HostOomKiller),
        ("RuntimeError: DataLoader worker (pid 19597) is killed by signal: Killed.", OomKind::DataloaderKilled),
        ("RuntimeError: DataLoader worker (pid 7579) is killed by signal: Bus error. It is possible that dataloader's workers are out of shared memory. Please try to raise your shared memory limit.", OomKind::DataloaderShm),
        ("RuntimeError: unable to write to file </torch_18692_1954506624>: No space left on device (28)", OomKind::DataloaderShm),
        ("E0729 12:42:15.153488 139 api.py:826] failed (exitcode: -9) local_rank: 0 (pid: 4242) of binary: /usr/bin/python", OomKind::TorchrunSigkill),
        ("  exitcode  : -9 (pid: 4242)", OomKind::TorchrunSigkill),
        ("Signal 9 (SIGKILL) received by PID 4242", OomKind::TorchrunSigkill),
    ];
    for (text, kind) in cases {
        let ev = one(text);
        assert_eq!(ev.kind, *kind, "{text}");
    }
    // specific fields
    let e = one(cases[7].0);
    assert_eq!(e.requested_bytes, Some(72 * GIB));
    let e = one(cases[14].0);
    assert_eq!(e.requested_bytes, Some(165_425_291_480));
    assert_eq!(e.device.as_deref(), Some("gpu:0"));
    let e = one(cases[17].0);
    assert_eq!(e.pid, Some(4242));
    assert_eq!(e.anon_rss_bytes, Some(7_654_321 * 1024));
    assert_eq!(e.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
    let e = one(cases[18].0);
    assert_eq!(e.pid, Some(1000), "legacy: the child actually killed");
    assert_eq!(e.total_vm_bytes, Some(10 * 1024));
    let e = one(cases[3].0);
    assert_eq!(e.requested_bytes, Some(2 * GIB));
    assert_eq!(e.framework_versions.as_deref(), Some(">=2.12"));
}

#[test]
fn not_oom_lines_are_not_events() {
    let text = "[rank7]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled cuda error\n\
                [rank7]: Last error:\n[rank7]: Cuda failure 1 'invalid argument'\n\
                RuntimeError: DataLoader worker (pid 12) is killed by signal: Terminated.\n\
                Allocator (GPU_0_bfc) ran out of memory trying to allocate 2.16GiB with freed_by_count=0. The caller indicates that this is not a failure, but may mean that there could be performance gains if more memory were available.\n\
                epoch 3 loss 0.1 memory 12.00 GiB\n";
    assert!(parse_str(text).is_empty(), "{:#?}", parse_str(text));
}

#[test]
fn nvml_not_available_is_absent_with_a_warning() {
    let msg = "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacty of 23.99 GiB of which 7.20 GiB is free. Including non-PyTorch memory, this process has 17179869184.00 GiB memory in use. Process 42 has 17179869184.00 GiB memory in use. Of the allocated memory 14.51 GiB is allocated by PyTorch, and 685.18 MiB is reserved by PyTorch but unallocated.";
    let e = one(msg);
    assert_eq!(e.process_in_use_bytes, None);
    assert_eq!(e.other_processes.len(), 1);
    assert_eq!(e.other_processes[0].bytes, None);
    assert_eq!(e.warnings.len(), 2);
    assert!(e.warnings[0].contains("17179869184.00 GiB"));
}

#[test]
fn raw_byte_gpu_index_of_2_3() {
    let msg = b"torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 MiB. GPU \x01 has a total capacity of 23.65 GiB of which 1.06 MiB is free. Of the allocated memory 1.00 GiB is allocated by PyTorch, and 2.00 MiB is reserved by PyTorch but unallocated.";
    let ev = parse_bytes(msg);
    assert_eq!(ev[0].device.as_deref(), Some("cuda:1"));
    assert_eq!(ev[0].framework_versions.as_deref(), Some(">=2.3,<2.4"));
    let stripped = String::from_utf8_lossy(msg).replace('\u{1}', "");
    let e = one(&stripped);
    assert_eq!(e.device, None);
    assert_eq!(e.framework_versions.as_deref(), Some(">=2.3,<2.4"));
    assert_eq!(e.total_capacity_bytes, parse_size("23.65 GiB").ok());
}

#[test]
fn several_events_and_invalid_utf8() {
    let mut log = Vec::new();
    for i in 0..3u8 {
        log.extend_from_slice(b"garbage \xff\xfe line\n");
        log.extend_from_slice(format!("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {}.00 MiB. GPU 0 has a total capacity of 23.55 GiB of which 1.00 MiB is free. Of the allocated memory 20.00 GiB is allocated by PyTorch, and 2.00 MiB is reserved by PyTorch but unallocated.\n", 20 + 2 * i).as_bytes());
    }
    let ev = parse_bytes(&log);
    assert_eq!(ev.len(), 3);
    assert_eq!(ev.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 4, 6]);
    let r = parse_reader(std::io::Cursor::new(&log)).unwrap();
    assert_eq!(r.events, ev);
    assert_eq!(r.lines, 6);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn hip_messages_round_trip(s in sizes(), hipified in any::<bool>()) {
        let msg = new_style(&s, "2.4", "1").replace("CUDA out of memory", "HIP out of memory").replace("CUDA Graphs", "HIP Graphs");
        let msg = if hipified { msg.replace("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF") } else { msg };
        let ev = one(&msg);
        prop_assert_eq!(ev.kind, OomKind::HipOom);
        prop_assert_eq!(ev.device.as_deref(), Some("hip:1"));
        close(ev.requested_bytes, s.req, "requested");
        close(ev.private_pool_bytes, s.private, "private");
        prop_assert_eq!(ev.framework_versions.as_deref(), Some(">=2.4,<2.10"));
    }

    #[test]
    fn xpu_messages_round_trip(s in sizes(), allowed in any::<bool>()) {
        let f = format_size;
        let a = if allowed { format!("{} allowed; ", f(s.allowed)) } else { String::new() };
        let msg = format!("torch.OutOfMemoryError: XPU out of memory. Tried to allocate {}. GPU 0 has a total capacity of {} of which {} is free. {a}Of the allocated memory {} is allocated by PyTorch, and {} is reserved by PyTorch but unallocated. Please use `empty_cache` to release all unoccupied cached memory.", f(s.req), f(s.total), f(s.free), f(s.allocated), f(s.unalloc));
        let ev = one(&msg);
        prop_assert_eq!(ev.kind, OomKind::XpuOom);
        prop_assert_eq!(ev.device.as_deref(), Some("xpu:0"));
        close(ev.requested_bytes, s.req, "requested");
        close(ev.total_capacity_bytes, s.total, "total");
        close(ev.free_bytes, s.free, "free");
        close(ev.allocated_bytes, s.allocated, "allocated");
        close(ev.reserved_unallocated_bytes, s.unalloc, "unallocated");
        if allowed { close(ev.allowed_bytes, s.allowed, "allowed"); }
    }

    #[test]
    fn kernel_and_cpu_numbers_round_trip(pid in 1u64..4_000_000, vm in 0u64..1 << 40, rss in 0u64..1 << 36, shm in 0u64..1 << 30, req in 0u64..u64::MAX, sep in any::<bool>()) {
        let k = |x: u64| if sep {
            // thousands separators, as pasted logs sometimes have them
            let s = x.to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 { out.push(','); }
                out.push(c);
            }
            out
        } else { x.to_string() };
        let line = format!("[441280.839852] Out of memory: Killed process {pid} (python) total-vm:{}kB, anon-rss:{}kB, file-rss:0kB, shmem-rss:{}kB, UID:1000 pgtables:49772kB oom_score_adj:0", k(vm), k(rss), k(shm));
        let ev = one(&line);
        prop_assert_eq!(ev.kind, OomKind::HostOomKiller);
        prop_assert_eq!(ev.pid, Some(pid));
        prop_assert_eq!(ev.total_vm_bytes, Some(vm * 1024));
        prop_assert_eq!(ev.anon_rss_bytes, Some(rss * 1024));
        prop_assert_eq!(ev.shmem_rss_bytes, Some(shm * 1024));
        let cpu = format!("RuntimeError: [enforce fail at alloc_cpu.cpp:75] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate {req} bytes. Error code 12 (Cannot allocate memory)");
        prop_assert_eq!(one(&cpu).requested_bytes, Some(req));
    }
}

#[test]
fn progress_bar_lines_longer_than_a_block() {
    // a 3 MiB tqdm line redrawn with \r, the OOM message in its last segment
    let mut log = "step 1\n".to_string();
    for i in 0..80_000 {
        log.push_str(&format!(
            " {i:>5}/40000 [00:01<00:02, 3.2it/s, loss=0.123]\r"
        ));
    }
    log.push_str("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 23.55 GiB of which 1.00 MiB is free. Of the allocated memory 20.00 GiB is allocated by PyTorch, and 2.00 MiB is reserved by PyTorch but unallocated.\nlast\n");
    assert!(log.len() > 2 << 20);
    let r = parse_reader(std::io::Cursor::new(log.as_bytes())).unwrap();
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].line, 2);
    assert_eq!(r.lines, 3);
    assert_eq!(parse_str(&log), r.events);
}

#[test]
fn tensorflow_dump_and_exception_are_one_event() {
    // BFC ran out, its dump (every line from bfc_allocator.cc), the Stats block, then the op error:
    // one failure. The pool had Limit - InUse = 2.5 GiB free, more than the 560 MiB asked for.
    let log = "\
2023-04-23 01:00:16.820335: W tensorflow/core/common_runtime/bfc_allocator.cc:479] Allocator (GPU_0_bfc) ran out of memory trying to allocate 560.44MiB (rounded to 587661312)requested by op _EagerConst
If the cause is memory fragmentation maybe the environment variable 'TF_GPU_ALLOCATOR=cuda_malloc_async' will improve the situation.
Current allocation summary follows.
2023-04-23 01:00:16.820400: I tensorflow/core/common_runtime/bfc_allocator.cc:1033] BFCAllocator dump for GPU_0_bfc
2023-04-23 01:00:16.820410: I tensorflow/core/common_runtime/bfc_allocator.cc:1040] Bin (256): \tTotal Chunks: 10, Chunks in use: 10. 2.5KiB allocated for chunks. 2.5KiB in use in bin. 40B client-requested in use in bin.
2023-04-23 01:00:16.820500: I tensorflow/core/common_runtime/bfc_allocator.cc:1100] Stats: 
Limit:                     10737418240
InUse:                      8053063680
MaxInUse:                   9000000000
NumAllocs:                        1234
MaxAllocSize:               2000000000

2023-04-23 01:00:16.820600: W tensorflow/core/common_runtime/bfc_allocator.cc:491] **************************************************_____
Traceback (most recent call last):
  File \"train.py\", line 3, in <module>
tensorflow.python.framework.errors_impl.ResourceExhaustedError: {{function_node __wrapped__Mul}} OOM when allocating tensor with shape[1024,1024,140] and type float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc [Op:Mul]
";
    let ev = parse_str(log);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    let e = &ev[0];
    assert_eq!(e.kind, OomKind::TfOom);
    assert_eq!(e.line, 1);
    assert_eq!(e.requested_bytes, Some(587_661_312));
    assert_eq!(e.allowed_bytes, Some(10_737_418_240));
    assert_eq!(e.allocated_bytes, Some(8_053_063_680));
    assert_eq!(e.tensor_shape.as_deref(), Some("[1024,1024,140]"));
    assert_eq!(e.tensor_bytes, Some(1024 * 1024 * 140 * 4));
    assert_eq!(e.device.as_deref(), Some("gpu:0"));
    assert_eq!(e.cause, oomdoc::oom::Cause::Fragmentation);
    // a second failure later is a second event
    let twice = format!("{log}{log}");
    assert_eq!(parse_str(&twice).len(), 2);
}

#[test]
fn a_handled_oom_line_does_not_swallow_the_next_lines() {
    let log = "WARNING: CUDA out of memory, skipping batch 12\nRuntimeError: DataLoader worker (pid 7) is killed by signal: Killed.\n";
    let ev = parse_str(log);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert_eq!(ev[0].kind, OomKind::CudaOom);
    assert_eq!(ev[0].requested_bytes, None);
    assert_eq!(ev[1].kind, OomKind::DataloaderKilled);
}

proptest! {
    #[test]
    fn size_parsing_never_panics(num in "[0-9.,]{0,40}", unit in "(bytes|B|KiB|MiB|GiB|TiB|PiB|EiB|KB|MB|GB|kB|x)") {
        let _ = oomdoc::oom::size::parse_value(&num, &unit);
        let _ = parse_size(&format!("{num} {unit}"));
    }
}
