//! The `diagnose` report in English and Chinese: per event the seed document's sections
//! (问题分析 · 当前状态 · 内存使用分析 · 解决方案（按优先级排序）) with the numbers read off the message.
use crate::report::units::{bytes, pct};
use crate::report::{fill, Document, Lang};
use crate::units::GIB;

use super::analysis::{Advice, Cause};
use super::event::{OomEvent, OomKind, Report};

crate::catalogue! {
    pub enum W {
        Title => ("Out-of-memory diagnosis", "内存不足问题分析和解决方案"),
        Found => ("{0}: {1} out-of-memory event(s) found in {2} lines.", "{0}：在 {2} 行中发现 {1} 个内存不足事件。"),
        NoneFound => ("{0}: no OOM event found ({1} lines read).", "{0}：未发现内存不足（OOM）事件（共读取 {1} 行）。"),
        Event => ("Event {0}: {1}, line {2}", "事件 {0}：{1}，第 {2} 行"),
        Analysis => ("Problem analysis", "问题分析"),
        State => ("Current state", "当前状态"),
        Usage => ("Memory use", "内存使用分析"),
        Solutions => ("What to try, most promising first", "解决方案（按优先级排序）"),
        LikelyCause => ("Likely cause: {}.", "可能原因：{}。"),
        AlsoCause => ("Also contributing: {}.", "同时起作用的因素：{}。"),
        Device => ("Device", "设备"),
        Rank => ("Rank", "进程序号（rank）"),
        Versions => ("Framework version (from the wording)", "框架版本（由报错措辞推断）"),
        Total => ("GPU total capacity", "GPU总容量"),
        Allowed => ("Allowed for this process", "本进程允许使用"),
        InUse => ("Memory in use (this process)", "已使用内存（本进程）"),
        Allocated => ("Allocated by PyTorch", "PyTorch分配"),
        AllocatedOther => ("Allocated", "已分配"),
        Reserved => ("Reserved by PyTorch", "PyTorch预留"),
        Unallocated => ("Reserved but unallocated", "预留但未分配"),
        Private => ("In private pools (CUDA graphs)", "私有内存池（CUDA Graphs）"),
        NonFramework => ("Outside PyTorch's allocator (this process)", "本进程中PyTorch分配器之外的内存"),
        Others => ("Other processes", "其他进程"),
        Outside => ("Used outside this process", "本进程以外占用"),
        OtherAllocs => ("Other allocations", "其他分配"),
        Free => ("Free memory", "空闲内存"),
        Error => ("Error", "错误"),
        FailedAlloc => ("failed while trying to allocate {}", "尝试分配{}时失败"),
        Shortfall => ("Shortfall", "缺口"),
        Fragmentation => ("Unallocated share of the reserved memory", "预留内存中未分配的比例（内存碎片）"),
        Status => ("Library status", "库返回状态"),
        Call => ("Failed call", "失败的调用"),
        Shape => ("Tensor shape", "张量形状"),
        TensorBytes => ("Tensor size", "张量大小"),
        Largest => ("Largest buffer at the peak", "峰值时最大的缓冲区"),
        Op => ("Op", "算子"),
        AllocatorName => ("Allocator", "分配器"),
        Source => ("Source", "源码位置"),
        Process => ("Killed process", "被杀死的进程"),
        InvokedBy => ("Invoked by", "触发者"),
        Constraint => ("Constraint", "约束"),
        Rss => ("Resident memory (anon + shmem)", "常驻内存（anon + shmem）"),
        TotalVm => ("Virtual memory", "虚拟内存"),
        Shmem => ("Shared memory (shmem-rss)", "共享内存（shmem-rss）"),
        Signal => ("Signal", "信号"),
        ExitCode => ("Exit code", "退出码"),
        LocalRank => ("Local rank", "本地rank"),
        Worker => ("Worker pid", "工作进程pid"),
        Note => ("Note: {}", "注意：{}"),
        WithinRounding => ("about 0: within the rounding of the printed numbers", "约为0：在打印数值的舍入误差之内"),
        UnknownAmount => ("an unknown amount (NVML: not available)", "未知大小（NVML无法提供）"),
        Pool => ("Pool", "内存池"),
    }
}

crate::catalogue! {
    pub enum C {
        Capacity => ("not enough memory for the work (capacity)", "显存容量不足"),
        Fragmentation => ("memory fragmentation", "内存碎片"),
        OtherProcesses => ("other processes hold the memory", "其他进程占用显存"),
        HostRam => ("host RAM ran out", "主机内存不足"),
        SharedMemory => ("shared memory (/dev/shm) ran out", "共享内存（/dev/shm）不足"),
        LibraryWorkspace => ("memory held outside the framework's allocator (library workspaces, CUDA context)", "框架分配器之外的内存占用（库工作区、CUDA上下文）"),
        OutsideAllocator => ("a CUDA allocation outside the caching allocator found the GPU full", "缓存分配器之外的CUDA分配时GPU已满"),
        SingleTensor => ("a single allocation larger than the memory there is", "单个分配超过全部可用内存"),
        Unknown => ("not visible in the numbers", "从数字上看不出"),

        CapacityCap => ("The per-process cap of {0} ran out: PyTorch's cache holds {1}, and the next {2} did not fit (shortfall {3}), although the GPU still had {4} free.", "本进程的显存上限{0}已用完：PyTorch缓存占用{1}，再分配{2}时失败（缺口{3}），而GPU上仍有{4}空闲。"),
        CapacityFull => ("The step needs more than the {0} it may use: live tensors hold {1} ({2} of it), and the next {3} did not fit (shortfall {4}). Releasing the cache would not change that; the work itself must need less.", "训练步骤需要的显存超过了可用的{0}：存活张量已占用{1}（{2}），再分配{3}时失败（缺口{4}）。释放缓存无济于事，必须降低训练本身的显存需求。"),
        CapacityShort => ("The allocation of {0} did not fit (shortfall {1}).", "分配{0}时失败（缺口{1}）。"),
        FragDetail => ("{0} is reserved by PyTorch but unallocated ({1} of the reserved memory), more than the {2} that was missing, but no free piece was large enough for {3}.", "有{0}被PyTorch预留但未分配（占预留内存的{1}），超过了缺口{2}，但没有一块连续空间能放下{3}。"),
        OthersDetail => ("{0} of this GPU is used outside this process, more than the {1} that was missing.", "这块GPU上有{0}被本进程以外占用，超过了缺口{1}。"),
        NfDetail => ("{0} of this process's GPU memory is outside PyTorch's allocator, more than the {1} that was missing.", "本进程有{0}显存不在PyTorch分配器中，超过了缺口{1}。"),
        SingleDetail => ("One allocation of {0} is larger than all {1} there is.", "单次分配{0}就超过了全部的{1}。"),
        UnknownDetail => ("The request ({0}) was smaller than the {1} the message calls free.", "请求的{0}小于报错中显示的空闲内存{1}。"),
        HostDetailRss => ("The kernel killed {0}, which held {1} of RAM.", "内核杀死了{0}，它占用了{1}内存。"),
        HostDetailCgroup => ("The limit was a cgroup's (container or job limit), not the machine's RAM.", "触发的是cgroup的限制（容器或作业的内存上限），而不是整机内存。"),
        CpuDetail => ("A host (CPU) allocation of {0} failed: this is RAM, not GPU memory.", "主机（CPU）内存分配{0}失败：不足的是内存，不是显存。"),
        DlKilledDetail => ("A DataLoader worker was killed with SIGKILL, almost always by the Linux OOM killer because host RAM ran out: the GPU is not involved.", "DataLoader工作进程被SIGKILL杀死，几乎总是Linux OOM killer因主机内存耗尽所为：与GPU无关。"),
        ShmDetail => ("A DataLoader worker hit a bus error writing a batch to shared memory: /dev/shm is full (Docker's default is only 64 MiB).", "DataLoader工作进程向共享内存写入batch时发生总线错误：/dev/shm已满（Docker默认只有64 MiB）。"),
        TorchrunDetail => ("A torchrun worker ended with exit code -9 (SIGKILL): usually the Linux OOM killer, because host RAM ran out.", "torchrun工作进程以退出码-9（SIGKILL）结束：通常是主机内存耗尽后被Linux OOM killer杀死。"),
        CudaErrorDetail => ("CUDA itself failed to allocate, outside PyTorch's caching allocator (context creation, CUDA graph capture, a library's own cudaMalloc), so the message has no numbers.", "CUDA本身分配失败，发生在PyTorch缓存分配器之外（创建上下文、CUDA Graph捕获、库自己的cudaMalloc），因此报错中没有数字。"),
        LibDetail => ("{0} failed to allocate: the GPU was already full when the library needed its workspace.", "{0}分配失败：库需要工作区时GPU已经满了。"),
        TfDetail => ("The allocator could not find {0} for the next tensor.", "分配器无法为下一个张量找到{0}。"),
    }
}

crate::catalogue! {
    pub enum A {
        Single => ("A single allocation of {0} is larger than all {1} there is{2}: no allocator setting or cache release can make it fit. Shrink that one tensor: lower the dimension that makes it (batch size, sequence length, resolution, the vocabulary dimension of the logits), compute it in chunks, or shard it across GPUs.", "单次分配{0}就超过了全部可用的{1}{2}：任何分配器设置或释放缓存都无法让它放下。必须缩小这一个张量：降低决定其大小的维度（batch_size、序列长度、分辨率、logits的词表维度），分块计算，或在多卡间分片。"),
        ShapeSuffix => (" (shape {})", "（形状 {}）"),
        RaiseCap => ("This process is capped at {0} (torch.cuda.set_per_process_memory_fraction) while the GPU still had {1} free: if the cap is not deliberate, raise or remove it.", "本进程被限制为最多使用{0}（torch.cuda.set_per_process_memory_fraction），而GPU上仍有{1}空闲：如果这个上限不是有意设置的，提高或取消它。"),
        Reduce => ("Reduce the memory the step needs{0}: bf16 mixed precision, gradient checkpointing, a smaller batch size with gradient accumulation (keeps the effective batch size), fused attention (SDPA), a fused or 8-bit optimizer.{1}", "降低训练步骤所需显存{0}：混合精度训练（bf16）、梯度检查点、减小batch_size并用梯度累积保持有效batch_size、融合注意力（SDPA）、融合或8位优化器。{1}"),
        ReduceBy => (" by at least {}", "，至少减少{}"),
        ReduceShare => (" (live tensors already fill {0} of the {1} limit)", "（存活张量已占满{1}上限的{0}）"),
        ReducePlan => (" `oomdoc plan --model MODEL --gpu-memory {}` computes which combination fits and runs fastest.", "`oomdoc plan --model MODEL --gpu-memory {}` 会计算哪种组合能放下且最快。"),
        ExpCovers => ("{0} is reserved by PyTorch but unallocated, at least the {1} that was missing: set `{2}=expandable_segments:True` so the cache grows its segments instead of keeping pieces too small for the request.", "有{0}被PyTorch预留但未分配，不少于缺口{1}：设置 `{2}=expandable_segments:True`，让缓存扩展已有的段，而不是留下放不下请求的碎片。"),
        ExpPart => ("{0} is reserved but unallocated, {1} of the {2} that was missing: `{3}=expandable_segments:True` recovers part of it, not enough on its own.", "有{0}预留但未分配，相当于缺口{2}的{1}：`{3}=expandable_segments:True` 能找回一部分，但单靠它不够。"),
        MaxSplit => ("{} is reserved but unallocated. This PyTorch predates expandable_segments (2.1): set `PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128` (any value of at least 20) so large cached blocks are not split by small tensors, or upgrade PyTorch and use `expandable_segments:True`.", "有{}预留但未分配。此PyTorch版本早于expandable_segments（2.1）：设置 `PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128`（不小于20即可），避免大块缓存被小张量切碎；或升级PyTorch并使用 `expandable_segments:True`。"),
        TfAsync => ("The allocator's pool had {} free, enough for the request but not in one piece: set `TF_GPU_ALLOCATOR=cuda_malloc_async`.", "分配器内存池中有{}空闲，足够本次请求但不连续：设置 `TF_GPU_ALLOCATOR=cuda_malloc_async`。"),
        StopProc => ("Process {0} holds {1} on this GPU: stop it, wait for it, or run on another GPU (`CUDA_VISIBLE_DEVICES`).", "进程 {0} 在这块GPU上占用了{1}：结束它、等它完成，或换一块GPU（`CUDA_VISIBLE_DEVICES`）。"),
        OutsideCtx => ("{} of this GPU is not held by PyTorch's cache: this process's CUDA context (0.3-0.6 GiB), other libraries, and other processes or the display. Check `nvidia-smi` for other processes and stop them, or use another GPU.", "这块GPU上有{}不在PyTorch缓存中：本进程的CUDA上下文（0.3-0.6 GiB）、其他库，以及其他进程或显示输出。用 `nvidia-smi` 检查并结束其他进程，或换一块GPU。"),
        MaxSplitOld => ("{} is reserved but unallocated. This PyTorch (before 1.10) has no allocator settings against fragmentation: upgrade PyTorch and set `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`, or call `torch.cuda.empty_cache()` between phases that allocate differently sized tensors.", "有{}预留但未分配。此PyTorch版本（1.10之前）没有应对内存碎片的分配器设置：升级PyTorch并设置 `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`，或在分配不同大小张量的阶段之间调用 `torch.cuda.empty_cache()`。"),
        Outside => ("{} of this GPU is used outside this process (other processes, the display): find them with `nvidia-smi` and stop them, or use another GPU.", "这块GPU上有{}被本进程以外占用（其他进程、显示输出）：用 `nvidia-smi` 找出并结束它们，或换一块GPU。"),
        NonFw => ("{} of this process's GPU memory is outside PyTorch's allocator: the CUDA context (0.3-0.6 GiB), cuDNN/cuBLAS workspaces, NCCL buffers and any other GPU library in the process (TensorRT, JAX, CuPy, custom CUDA extensions). Free or limit those, or leave that much headroom.", "本进程有{}显存不在PyTorch分配器中：CUDA上下文（0.3-0.6 GiB）、cuDNN/cuBLAS工作区、NCCL缓冲区，以及进程中其他GPU库（TensorRT、JAX、CuPy、自定义CUDA扩展）。释放或限制它们，或预留出这么多余量。"),
        BelowFree => ("The request ({0}) was smaller than the free memory printed ({1}): memory may have been released between the failure and the message, or the driver could not give one contiguous block (Windows WDDM). Run again to see whether it repeats.", "请求的大小（{0}）小于打印的空闲内存（{1}）：可能在报错前后有内存被释放，或驱动无法提供一整块连续内存（Windows WDDM）。重新运行看是否复现。"),
        Xpu => ("Intel GPUs refuse a single allocation above 4 GiB unless relaxed allocation limits are enabled, and {} was requested: set `UR_L0_ENABLE_RELAXED_ALLOCATION_LIMITS=1` or split the tensor.", "Intel GPU默认拒绝超过4 GiB的单次分配，而本次请求了{}：设置 `UR_L0_ENABLE_RELAXED_ALLOCATION_LIMITS=1`，或拆分该张量。"),
        Sysmem => ("{0} is in use on a {1} card: the Windows driver is spilling into shared system memory (CUDA Sysmem Fallback Policy), which is many times slower. Keep the work within the card, or turn the fallback off in the NVIDIA control panel to fail fast.", "在{1}的显卡上使用了{0}：Windows驱动正在把显存溢出到共享系统内存（CUDA Sysmem Fallback Policy），速度会慢很多。让训练控制在显存之内，或在NVIDIA控制面板中关闭该回退以尽早报错。"),
        Mps => ("MPS caps this process at {} (PYTORCH_MPS_HIGH_WATERMARK_RATIO, default 1.7 x the recommended working set). `PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0` removes the cap but can freeze the system when unified memory runs out; reducing memory is safer.", "MPS将本进程限制为{}（PYTORCH_MPS_HIGH_WATERMARK_RATIO，默认是推荐工作集的1.7倍）。`PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0` 可取消上限，但统一内存耗尽时可能导致系统卡死；降低内存占用更安全。"),
        CudaCtx => ("CUDA could not allocate outside the caching allocator: the GPU was already full. Check `nvidia-smi` for other processes; in servers such as vLLM lower the share reserved up front (`--gpu-memory-utilization`) so CUDA graph capture and NCCL have room; `CUDA_LAUNCH_BLOCKING=1` shows the call that failed.", "CUDA在缓存分配器之外分配失败：GPU已经满了。用 `nvidia-smi` 检查其他进程；在vLLM等服务中降低预先占用的比例（`--gpu-memory-utilization`），给CUDA Graph捕获和NCCL留出空间；设置 `CUDA_LAUNCH_BLOCKING=1` 可看到失败的调用。"),
        Cublas => ("cuBLAS could not allocate its handle or workspace: the GPU was already full when it was first needed (often the first matrix multiply after the model filled the memory). Free memory before it, and check `nvidia-smi` for other processes.", "cuBLAS无法分配句柄或工作区：第一次需要它时GPU已经满了（常见于模型占满显存后的第一次矩阵乘法）。在此之前释放显存，并用 `nvidia-smi` 检查其他进程。"),
        Cudnn => ("cuDNN found no convolution algorithm whose workspace fits: set `torch.backends.cudnn.benchmark = False` (benchmarking tries workspace-hungry algorithms), lower the batch size, or free memory before the convolution.", "cuDNN找不到工作区能放下的卷积算法：设置 `torch.backends.cudnn.benchmark = False`（benchmark会尝试需要大工作区的算法），减小batch_size，或在卷积前释放显存。"),
        Nccl => ("NCCL could not allocate its communication buffers (NCCL_BUFFSIZE, 4 MiB by default, per channel and peer): initialise the process group and run a first collective before the model fills the GPU, leave headroom, or lower `NCCL_BUFFSIZE`.", "NCCL无法分配通信缓冲区（NCCL_BUFFSIZE，默认4 MiB，每个通道和对端各一份）：在模型占满显存之前初始化进程组并执行一次集合通信，留出余量，或调小 `NCCL_BUFFSIZE`。"),
        Xla => ("JAX preallocates 75% of the GPU by default: `XLA_PYTHON_CLIENT_MEM_FRACTION=.95` gives XLA more of the card; `XLA_PYTHON_CLIENT_PREALLOCATE=false` allocates on demand (needed when several processes share the GPU).", "JAX默认预先占用75%的显存：`XLA_PYTHON_CLIENT_MEM_FRACTION=.95` 让XLA使用更多显存；`XLA_PYTHON_CLIENT_PREALLOCATE=false` 按需分配（多个进程共享GPU时需要）。"),
        Largest => ("The largest buffer at the peak is {0}{1}{2}: making that one operation smaller (a smaller batch, chunking, lower precision) lowers the peak most.", "峰值时最大的缓冲区为{0}{1}{2}：缩小这一个操作（更小的batch、分块、更低精度）最能降低峰值。"),
        AtSource => (" at {}", "，位于 {}"),
        TfTensor => ("The tensor that failed has shape {0}{1}: its first dimension is usually the batch size; halving it halves this tensor.", "分配失败的张量形状为 {0}{1}：第一维通常就是batch_size，减半即可让这个张量减半。"),
        TfTensorBytes => (" ({})", "（{}）"),
        TfGrowth => ("TensorFlow reserves nearly all GPU memory at start: `tf.config.experimental.set_memory_growth(gpu, True)` allocates on demand, which matters when another process or framework shares the GPU.", "TensorFlow启动时会占用几乎全部显存：`tf.config.experimental.set_memory_growth(gpu, True)` 改为按需分配，在其他进程或框架共享GPU时很重要。"),
        Cpu => ("A CPU tensor of {} could not be allocated in host RAM: check that this tensor is meant to be on the CPU (a missing `.to(device)`, a whole dataset or checkpoint loaded at once: `torch.load(..., mmap=True)`), or shrink it.", "无法在主机内存中分配{}的CPU张量：确认这个张量本该在CPU上（是否漏了 `.to(device)`，是否一次性加载了整个数据集或检查点：`torch.load(..., mmap=True)`），或缩小它。"),
        HostRam => ("{0}{1}: lower host memory (fewer DataLoader workers, a dataset read lazily instead of loaded whole, no large pinned buffers) or give the job more RAM{2}.", "{0}{1}：降低主机内存占用（减少DataLoader工作进程、按需读取而不是整体加载数据集、避免大的锁页内存缓冲区），或给作业更多内存{2}。"),
        HostRamWho => ("The kernel killed {}", "内核杀死了{}"),
        HostRamSomeone => ("The kernel's OOM killer ran", "内核OOM killer被触发"),
        HostRamHeld => (", which held {} of RAM", "，它占用了{}内存"),
        HostRamCgroup => (" (the limit was a cgroup's: raise the container or job memory limit)", "（触发的是cgroup限制：提高容器或作业的内存上限）"),
        Workers => ("DataLoader workers each hold a copy of what the dataset object references (Python lists of objects are copied page by page as they are read): lower `num_workers` and `prefetch_factor`, keep samples in numpy arrays or on disk, and turn `pin_memory` off if host RAM is tight.", "每个DataLoader工作进程都持有数据集对象所引用内容的一份拷贝（Python对象列表在读取时会被逐页复制）：减小 `num_workers` 和 `prefetch_factor`，把样本放在numpy数组或磁盘上，主机内存紧张时关闭 `pin_memory`。"),
        Shm => ("Workers hand batches to the main process through /dev/shm: check `df -h /dev/shm`; in Docker run with `--shm-size=16g` or `--ipc=host`; otherwise use fewer workers or smaller batches.", "工作进程通过/dev/shm把batch传给主进程：用 `df -h /dev/shm` 检查；在Docker中使用 `--shm-size=16g` 或 `--ipc=host` 运行；否则减少工作进程数或减小batch。"),
        Kernel => ("A SIGKILL from outside is almost always the Linux OOM killer: confirm with `dmesg -T | grep -i -E 'killed process|oom'` (or `journalctl -k`) and run `oomdoc diagnose` on that output.", "来自外部的SIGKILL几乎总是Linux OOM killer：用 `dmesg -T | grep -i -E 'killed process|oom'`（或 `journalctl -k`）确认，并对其输出运行 `oomdoc diagnose`。"),
        PerRank => ("Every rank on the host loads its own copy of the model, the checkpoint and the dataset: with N GPUs per node host RAM must hold N copies. Load checkpoints with `mmap=True` or on one rank, and share the dataset instead of copying it.", "同一台机器上的每个rank都会加载一份模型、检查点和数据集：每台机器N块GPU，主机内存就要放下N份。用 `mmap=True` 或只在一个rank上加载检查点，并共享数据集而不是复制。"),
    }
}

fn kind_title(kind: OomKind, lang: Lang) -> &'static str {
    let (en, zh) = match kind {
        OomKind::CudaOom => (
            "CUDA out of memory (PyTorch caching allocator)",
            "CUDA显存不足（PyTorch缓存分配器）",
        ),
        OomKind::HipOom => (
            "HIP out of memory (PyTorch on ROCm)",
            "HIP显存不足（ROCm版PyTorch）",
        ),
        OomKind::XpuOom => (
            "XPU out of memory (PyTorch on Intel GPU)",
            "XPU显存不足（Intel GPU）",
        ),
        OomKind::MpsOom => ("MPS out of memory (Apple GPU)", "MPS显存不足（Apple GPU）"),
        OomKind::CudaMallocAsyncOom => (
            "CUDA out of memory (cudaMallocAsync backend)",
            "CUDA显存不足（cudaMallocAsync后端）",
        ),
        OomKind::CudaErrorOom => (
            "CUDA error: out of memory (outside the caching allocator)",
            "CUDA错误：显存不足（缓存分配器之外）",
        ),
        OomKind::CpuAlloc => (
            "host allocation failed (PyTorch CPU allocator)",
            "主机内存分配失败（PyTorch CPU分配器）",
        ),
        OomKind::CublasAlloc => ("cuBLAS allocation failed", "cuBLAS分配失败"),
        OomKind::CudnnAlloc => ("cuDNN out of workspace memory", "cuDNN工作区显存不足"),
        OomKind::NcclOom => ("NCCL out of memory", "NCCL显存不足"),
        OomKind::XlaOom => ("XLA/JAX out of memory", "XLA/JAX显存不足"),
        OomKind::TfOom => ("TensorFlow out of memory", "TensorFlow显存不足"),
        OomKind::HostOomKiller => ("Linux OOM killer", "Linux OOM killer杀死进程"),
        OomKind::DataloaderKilled => (
            "DataLoader worker killed (host RAM)",
            "DataLoader工作进程被杀死（主机内存）",
        ),
        OomKind::DataloaderShm => (
            "DataLoader worker bus error (shared memory)",
            "DataLoader工作进程总线错误（共享内存）",
        ),
        OomKind::TorchrunSigkill => (
            "torchrun worker killed (exit code -9)",
            "torchrun工作进程被杀死（退出码-9）",
        ),
    };
    match lang {
        Lang::En => en,
        Lang::Zh => zh,
    }
}

fn cause_name(c: Cause) -> C {
    match c {
        Cause::Capacity => C::Capacity,
        Cause::Fragmentation => C::Fragmentation,
        Cause::OtherProcesses => C::OtherProcesses,
        Cause::HostRam => C::HostRam,
        Cause::SharedMemory => C::SharedMemory,
        Cause::LibraryWorkspace => C::LibraryWorkspace,
        Cause::OutsideAllocator => C::OutsideAllocator,
        Cause::SingleTensor => C::SingleTensor,
        Cause::Unknown => C::Unknown,
    }
}

/// The whole report: a title line, then one section per event.
pub fn document(report: &Report, source: &str, lang: Lang) -> Document {
    let mut d = Document::new();
    d.heading(1, W::Title.text(lang));
    if report.events.is_empty() {
        d.para(fill(W::NoneFound.text(lang), &[&source, &report.lines]));
    } else {
        d.para(fill(
            W::Found.text(lang),
            &[&source, &report.events.len(), &report.lines],
        ));
    }
    for w in &report.warnings {
        d.para(fill(W::Note.text(lang), &[w]));
    }
    for (i, ev) in report.events.iter().enumerate() {
        d.append(event_document(ev, i + 1, lang));
    }
    d
}

/// The sections of one event.
pub fn event_document(ev: &OomEvent, n: usize, lang: Lang) -> Document {
    let mut d = Document::new();
    d.heading(
        2,
        fill(
            W::Event.text(lang),
            &[&n, &kind_title(ev.kind, lang), &ev.line],
        ),
    );
    if !ev.message.is_empty() {
        d.code("text", ev.message.clone());
    }
    d.heading(3, W::Analysis.text(lang));
    let mut cause = fill(
        W::LikelyCause.text(lang),
        &[&cause_name(ev.cause).text(lang)],
    );
    if let Some(detail) = cause_detail(ev, lang) {
        if lang == Lang::En {
            cause.push(' ');
        }
        cause.push_str(&detail);
    }
    d.para(cause);
    if !ev.contributing.is_empty() {
        let sep = if lang == Lang::Zh { "；" } else { "; " };
        let names: Vec<&str> = ev
            .contributing
            .iter()
            .map(|c| cause_name(*c).text(lang))
            .collect();
        d.para(fill(W::AlsoCause.text(lang), &[&names.join(sep)]));
    }
    d.heading(3, W::State.text(lang));
    d.kv(state(ev, lang));
    if let Some(bars) = usage_bars(ev, lang) {
        d.heading(3, W::Usage.text(lang));
        d.bars(bars);
    }
    d.heading(3, W::Solutions.text(lang));
    let items: Vec<String> = ev.advice.iter().map(|a| advice_text(a, lang)).collect();
    d.bullets(items);
    if !ev.warnings.is_empty() {
        let notes: Vec<String> = ev
            .warnings
            .iter()
            .map(|w| fill(W::Note.text(lang), &[w]))
            .collect();
        d.bullets(notes);
    }
    d
}

fn b(x: u64) -> String {
    bytes(x)
}

fn cause_detail(ev: &OomEvent, lang: Lang) -> Option<String> {
    let short = ev.shortfall_bytes;
    let req = ev.requested_bytes;
    Some(match ev.cause {
        Cause::Capacity => {
            let r = req?;
            let s = short?;
            let sb = if s == 0 {
                W::WithinRounding.text(lang).to_string()
            } else {
                b(s)
            };
            match (ev.allowed_bytes, ev.free_bytes, ev.total_capacity_bytes) {
                (Some(a), Some(f), Some(t)) if a < t && f >= r => fill(
                    C::CapacityCap.text(lang),
                    &[
                        &b(a),
                        &b(ev.reserved_bytes.or(ev.allocated_bytes).unwrap_or(0)),
                        &b(r),
                        &sb,
                        &b(f),
                    ],
                ),
                _ => match (ev.limit_bytes(), ev.allocated_bytes) {
                    (Some(l), Some(al)) if l > 0 => fill(
                        C::CapacityFull.text(lang),
                        &[&b(l), &b(al), &pct(al as f64 / l as f64), &b(r), &sb],
                    ),
                    _ => fill(C::CapacityShort.text(lang), &[&b(r), &sb]),
                },
            }
        }
        Cause::Fragmentation => {
            if let (Some(u), Some(share)) = (ev.reserved_unallocated_bytes, ev.fragmentation_share)
            {
                fill(
                    C::FragDetail.text(lang),
                    &[&b(u), &pct(share), &b(short?), &b(req?)],
                )
            } else {
                let (r, s) = (req?, short?);
                fill(C::CapacityShort.text(lang), &[&b(r), &b(s)])
            }
        }
        Cause::OtherProcesses => {
            let outside = ev.advice.iter().find_map(|a| match a {
                Advice::OutsideProcess { bytes, .. } => Some(*bytes),
                _ => None,
            });
            let named: u64 = ev.other_processes.iter().filter_map(|p| p.bytes).sum();
            fill(
                C::OthersDetail.text(lang),
                &[&b(outside.unwrap_or(named)), &b(short?)],
            )
        }
        Cause::LibraryWorkspace => match ev.kind {
            OomKind::CublasAlloc | OomKind::CudnnAlloc | OomKind::NcclOom => {
                let lib = match ev.kind {
                    OomKind::CublasAlloc => "cuBLAS",
                    OomKind::CudnnAlloc => "cuDNN",
                    _ => "NCCL",
                };
                fill(C::LibDetail.text(lang), &[&lib])
            }
            _ => fill(
                C::NfDetail.text(lang),
                &[&b(ev.non_framework_bytes?), &b(short?)],
            ),
        },
        Cause::SingleTensor => fill(
            C::SingleDetail.text(lang),
            &[
                &b(req.or(ev.tensor_bytes)?),
                &b(ev.limit_bytes().or(ev.allowed_bytes)?),
            ],
        ),
        Cause::Unknown => fill(C::UnknownDetail.text(lang), &[&b(req?), &b(ev.free_bytes?)]),
        Cause::OutsideAllocator => C::CudaErrorDetail.text(lang).to_string(),
        Cause::SharedMemory => C::ShmDetail.text(lang).to_string(),
        Cause::HostRam => match ev.kind {
            OomKind::CpuAlloc => fill(C::CpuDetail.text(lang), &[&b(req?)]),
            OomKind::DataloaderKilled => C::DlKilledDetail.text(lang).to_string(),
            OomKind::TorchrunSigkill => C::TorchrunDetail.text(lang).to_string(),
            _ => {
                let mut s = String::new();
                if let (Some(name), Some(rss)) = (&ev.process_name, ev.anon_rss_bytes) {
                    let who = match ev.pid {
                        Some(p) => format!("{name} (pid {p})"),
                        None => name.clone(),
                    };
                    s = fill(
                        C::HostDetailRss.text(lang),
                        &[&who, &b(rss + ev.shmem_rss_bytes.unwrap_or(0))],
                    );
                }
                if ev.constraint.as_deref() == Some("CONSTRAINT_MEMCG") {
                    if !s.is_empty() {
                        s.push(' ');
                    }
                    s.push_str(C::HostDetailCgroup.text(lang));
                }
                if s.is_empty() {
                    return None;
                }
                s
            }
        },
    })
}

fn state(ev: &OomEvent, lang: Lang) -> Vec<(String, String)> {
    let mut kv: Vec<(String, String)> = Vec::new();
    let mut put = |k: W, v: String| kv.push((k.text(lang).to_string(), v));
    if let Some(d) = &ev.device {
        put(W::Device, d.clone());
    }
    if let Some(r) = ev.rank {
        put(W::Rank, r.to_string());
    }
    if let Some(v) = &ev.framework_versions {
        let fw = match ev.kind {
            OomKind::TfOom | OomKind::XlaOom => v.clone(),
            _ => format!("PyTorch {v}"),
        };
        put(W::Versions, fw);
    }
    let gpu_alloc = matches!(
        ev.kind,
        OomKind::CudaOom | OomKind::HipOom | OomKind::XpuOom | OomKind::CudaMallocAsyncOom
    );
    if let Some(t) = ev.total_capacity_bytes {
        put(W::Total, b(t));
    }
    if let Some(a) = ev.allowed_bytes {
        put(W::Allowed, b(a));
    }
    if let Some(p) = ev.process_in_use_bytes {
        put(W::InUse, b(p));
    }
    if let Some(a) = ev.allocated_bytes {
        put(
            if gpu_alloc {
                W::Allocated
            } else {
                W::AllocatedOther
            },
            b(a),
        );
    }
    if let Some(r) = ev.reserved_bytes {
        put(W::Reserved, b(r));
    }
    if let Some(u) = ev.reserved_unallocated_bytes {
        put(W::Unallocated, b(u));
    }
    if let Some(p) = ev.private_pool_bytes {
        put(W::Private, b(p));
    }
    if let Some(n) = ev.non_framework_bytes {
        put(W::NonFramework, b(n));
    }
    if let Some(o) = ev.other_allocations_bytes {
        put(W::OtherAllocs, b(o));
    }
    if !ev.other_processes.is_empty() {
        let list: Vec<String> = ev
            .other_processes
            .iter()
            .map(|p| match p.bytes {
                Some(x) => format!("pid {}: {}", p.pid, b(x)),
                None => format!("pid {}: {}", p.pid, W::UnknownAmount.text(lang)),
            })
            .collect();
        put(W::Others, list.join(", "));
    }
    if let (Some(t), Some(f), Some(p)) = (
        ev.total_capacity_bytes,
        ev.free_bytes,
        ev.process_in_use_bytes,
    ) {
        let outside = t.saturating_sub(f).saturating_sub(p);
        put(W::Outside, b(outside));
    }
    if let Some(f) = ev.free_bytes {
        put(W::Free, b(f));
    }
    if let Some(r) = ev.requested_bytes {
        put(W::Error, fill(W::FailedAlloc.text(lang), &[&b(r)]));
    }
    if let Some(s) = ev.shortfall_bytes {
        put(W::Shortfall, b(s));
    }
    if let Some(s) = ev.fragmentation_share {
        put(W::Fragmentation, pct(s));
    }
    if let Some(p) = &ev.pool {
        put(W::Pool, p.clone());
    }
    if let Some(e) = &ev.error {
        put(W::Status, e.clone());
    }
    if let Some(c) = &ev.call {
        put(W::Call, c.clone());
    }
    if let Some(s) = &ev.tensor_shape {
        let s = match &ev.dtype {
            Some(t) => format!("{s} {t}"),
            None => s.clone(),
        };
        put(W::Shape, s);
    }
    if let Some(t) = ev.tensor_bytes {
        put(W::TensorBytes, b(t));
    }
    if let Some(l) = ev.largest_buffer_bytes {
        put(W::Largest, b(l));
    }
    if let Some(o) = &ev.op {
        put(W::Op, o.clone());
    }
    if let Some(a) = &ev.allocator {
        put(W::AllocatorName, a.clone());
    }
    if let Some(s) = &ev.source {
        put(W::Source, s.clone());
    }
    let host_process = matches!(ev.kind, OomKind::HostOomKiller);
    if host_process {
        if let Some(name) = &ev.process_name {
            let v = match ev.pid {
                Some(p) => format!("{name} (pid {p})"),
                None => name.clone(),
            };
            put(W::Process, v);
        } else if let Some(p) = ev.pid {
            put(W::Process, format!("pid {p}"));
        }
    } else if let Some(p) = ev.pid {
        put(W::Worker, p.to_string());
    }
    if let Some(i) = &ev.invoked_by {
        put(W::InvokedBy, i.clone());
    }
    if let Some(c) = &ev.constraint {
        put(W::Constraint, c.clone());
    }
    if let Some(a) = ev.anon_rss_bytes {
        put(W::Rss, b(a + ev.shmem_rss_bytes.unwrap_or(0)));
    }
    if let Some(s) = ev.shmem_rss_bytes {
        put(W::Shmem, b(s));
    }
    if let Some(t) = ev.total_vm_bytes {
        put(W::TotalVm, b(t));
    }
    if let Some(s) = &ev.signal {
        put(W::Signal, s.clone());
    }
    if let Some(c) = ev.exit_code {
        put(W::ExitCode, c.to_string());
    }
    if let Some(l) = ev.local_rank {
        put(W::LocalRank, l.to_string());
    }
    kv
}

/// Bars of the device's memory: PyTorch's allocated and cached-free parts, the rest of this
/// process, other processes, free. Only when the card's total is known.
fn usage_bars(ev: &OomEvent, lang: Lang) -> Option<Vec<(String, f64, String)>> {
    let total = ev.total_capacity_bytes?;
    let alloc = ev.allocated_bytes?;
    let mut rows = Vec::new();
    let mut row = |k: W, x: u64| rows.push((k.text(lang).to_string(), x as f64, b(x)));
    row(W::Allocated, alloc);
    if let Some(u) = ev.reserved_unallocated_bytes {
        row(W::Unallocated, u);
    }
    if let Some(n) = ev.non_framework_bytes {
        row(W::NonFramework, n);
    }
    if let (Some(f), Some(p)) = (ev.free_bytes, ev.process_in_use_bytes) {
        row(W::Outside, total.saturating_sub(f).saturating_sub(p));
    }
    if let Some(o) = ev.other_allocations_bytes {
        row(W::OtherAllocs, o);
    }
    if let Some(f) = ev.free_bytes {
        row(W::Free, f);
    }
    row(W::Total, total);
    Some(rows)
}

fn gpu_memory_flag(limit: u64) -> String {
    format!("{:.2}GiB", limit as f64 / GIB as f64)
}

/// One advice item in words.
pub fn advice_text(a: &Advice, lang: Lang) -> String {
    match a {
        Advice::SingleTensor {
            requested_bytes,
            limit_bytes,
            shape,
        } => {
            let s = shape
                .as_ref()
                .map(|s| fill(A::ShapeSuffix.text(lang), &[s]))
                .unwrap_or_default();
            fill(
                A::Single.text(lang),
                &[&b(*requested_bytes), &b(*limit_bytes), &s],
            )
        }
        Advice::RaiseMemoryFraction {
            allowed_bytes,
            free_bytes,
        } => fill(
            A::RaiseCap.text(lang),
            &[&b(*allowed_bytes), &b(*free_bytes)],
        ),
        Advice::ReduceMemory {
            shortfall_bytes,
            limit_bytes,
            used_share,
        } => {
            let mut by = shortfall_bytes
                .map(|s| fill(A::ReduceBy.text(lang), &[&b(s)]))
                .unwrap_or_default();
            if let (Some(u), Some(l)) = (used_share, limit_bytes) {
                by.push_str(&fill(A::ReduceShare.text(lang), &[&pct(*u), &b(*l)]));
            }
            let plan = limit_bytes
                .map(|l| fill(A::ReducePlan.text(lang), &[&gpu_memory_flag(l)]))
                .unwrap_or_default();
            fill(A::Reduce.text(lang), &[&by, &plan])
        }
        Advice::ExpandableSegments {
            env,
            reserved_unallocated_bytes,
            shortfall_bytes,
            covers,
        } => {
            if *covers {
                fill(
                    A::ExpCovers.text(lang),
                    &[&b(*reserved_unallocated_bytes), &b(*shortfall_bytes), env],
                )
            } else {
                let share = *reserved_unallocated_bytes as f64 / (*shortfall_bytes).max(1) as f64;
                fill(
                    A::ExpPart.text(lang),
                    &[
                        &b(*reserved_unallocated_bytes),
                        &pct(share),
                        &b(*shortfall_bytes),
                        env,
                    ],
                )
            }
        }
        Advice::MaxSplitSize {
            reserved_unallocated_bytes,
            available,
        } => {
            let t = if *available {
                A::MaxSplit
            } else {
                A::MaxSplitOld
            };
            fill(t.text(lang), &[&b(*reserved_unallocated_bytes)])
        }
        Advice::TfAsyncAllocator { free_in_pool_bytes } => {
            fill(A::TfAsync.text(lang), &[&b(*free_in_pool_bytes)])
        }
        Advice::StopOtherProcess { pid, bytes } => {
            let amount = bytes
                .map(b)
                .unwrap_or_else(|| W::UnknownAmount.text(lang).to_string());
            fill(A::StopProc.text(lang), &[pid, &amount])
        }
        Advice::OutsideProcess {
            bytes,
            includes_context,
        } => {
            let t = if *includes_context {
                A::OutsideCtx
            } else {
                A::Outside
            };
            fill(t.text(lang), &[&b(*bytes)])
        }
        Advice::NonFrameworkMemory { bytes } => fill(A::NonFw.text(lang), &[&b(*bytes)]),
        Advice::RequestBelowFree {
            requested_bytes,
            free_bytes,
        } => fill(
            A::BelowFree.text(lang),
            &[&b(*requested_bytes), &b(*free_bytes)],
        ),
        Advice::XpuAllocationLimit { requested_bytes } => {
            fill(A::Xpu.text(lang), &[&b(*requested_bytes)])
        }
        Advice::SysmemFallback {
            used_bytes,
            total_capacity_bytes,
        } => fill(
            A::Sysmem.text(lang),
            &[&b(*used_bytes), &b(*total_capacity_bytes)],
        ),
        Advice::MpsWatermark { allowed_bytes } => fill(A::Mps.text(lang), &[&b(*allowed_bytes)]),
        Advice::CudaContext => A::CudaCtx.text(lang).to_string(),
        Advice::CublasWorkspace => A::Cublas.text(lang).to_string(),
        Advice::CudnnWorkspace => A::Cudnn.text(lang).to_string(),
        Advice::NcclBuffers => A::Nccl.text(lang).to_string(),
        Advice::XlaMemory => A::Xla.text(lang).to_string(),
        Advice::LargestBuffer {
            bytes,
            shape,
            source,
        } => {
            let s = shape
                .as_ref()
                .map(|s| fill(A::ShapeSuffix.text(lang), &[s]))
                .unwrap_or_default();
            let at = source
                .as_ref()
                .map(|s| fill(A::AtSource.text(lang), &[s]))
                .unwrap_or_default();
            fill(A::Largest.text(lang), &[&b(*bytes), &s, &at])
        }
        Advice::TfTensor { shape, bytes } => {
            let size = bytes
                .map(|x| fill(A::TfTensorBytes.text(lang), &[&b(x)]))
                .unwrap_or_default();
            fill(A::TfTensor.text(lang), &[shape, &size])
        }
        Advice::TfMemoryGrowth => A::TfGrowth.text(lang).to_string(),
        Advice::CpuTensor { requested_bytes } => fill(A::Cpu.text(lang), &[&b(*requested_bytes)]),
        Advice::HostRam {
            rss_bytes,
            process,
            cgroup,
        } => {
            let who = match process {
                Some(p) => fill(A::HostRamWho.text(lang), &[p]),
                None => A::HostRamSomeone.text(lang).to_string(),
            };
            let held = rss_bytes
                .map(|r| fill(A::HostRamHeld.text(lang), &[&b(r)]))
                .unwrap_or_default();
            let cg = if *cgroup {
                A::HostRamCgroup.text(lang)
            } else {
                ""
            };
            fill(A::HostRam.text(lang), &[&who, &held, &cg])
        }
        Advice::DataLoaderWorkers => A::Workers.text(lang).to_string(),
        Advice::SharedMemory => A::Shm.text(lang).to_string(),
        Advice::CheckKernelLog => A::Kernel.text(lang).to_string(),
        Advice::PerRankCopies => A::PerRank.text(lang).to_string(),
    }
}
