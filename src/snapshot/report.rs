//! The snapshot report (text / markdown / the body of the HTML page), en + zh.
use crate::catalogue;
use crate::report::units::{bytes, pct};
use crate::report::{fill, Document, Lang};
use crate::units::GIB;

use super::analysis::{Category, MomentKind, Phase, Site, SiteKind};
use super::Analysis;

catalogue! { pub enum W {
    Title => ("Memory snapshot: {}", "显存快照：{}"),
    Answer => ("In short", "结论"),
    OomLead => (
        "The program ran out of memory asking for {0} during the {1} (at {2}), with {3} allocated and {4} reserved by PyTorch.",
        "程序在{1}中尝试分配 {0} 时显存不足（位置 {2}），此时 PyTorch 已分配 {3}，预留 {4}。"),
    OomLeadNoSite => (
        "The program ran out of memory asking for {0} during the {1}, with {2} allocated and {3} reserved by PyTorch.",
        "程序在{1}中尝试分配 {0} 时显存不足，此时 PyTorch 已分配 {2}，预留 {3}。"),
    PeakLead => (
        "No out-of-memory event in the trace. The peak was {0} allocated ({1} reserved), {2} into the trace; the analysis below is of that moment.",
        "记录中没有显存不足事件。峰值显存为已分配 {0}（预留 {1}），出现在记录开始后 {2}；以下分析针对该时刻。"),
    SnapshotLead => (
        "No trace history in this snapshot: the analysis is of the moment it was taken, {0} allocated and {1} reserved.",
        "该快照没有分配记录：以下分析针对快照时刻，已分配 {0}，预留 {1}。"),
    ScopeInside => (
        "About {0} of the memory {1} ({2} of {3}) was allocated inside {4} ({5}), called from {6} at {7}",
        "{1}的显存中约 {0}（{3} 中的 {2}）是在 {4}（{5}）内部分配的，由 {7} 处的 {6} 调用"),
    ScopeOuter => (" in {0} ({1})", "（位于 {0}，{1}）"),
    ScopeAt => (
        "About {0} of the memory {1} ({2} of {3}) was allocated at {4} (in {5})",
        "{1}的显存中约 {0}（{3} 中的 {2}）分配于 {4}（函数 {5}）"),
    BiggestLines => (": {}.", "：{}。"),
    LineAt => ("{0} at the {1} line {2}", "{1}那一行（{2}）{0}"),
    LinePlain => ("{0} at {1}", "{1} 处 {0}"),
    And => (" and ", "，"),
    AtOom => ("at the OOM", "在 OOM 时"),
    AtPeak => ("at the peak", "在峰值时"),
    AtSnapshot => ("in the snapshot", "快照中"),
    TopLine => ("The biggest line is {0}: {1} ({2}).", "占用最多的一行是 {0}：{1}（{2}）。"),
    DeviceFree => (
        "The GPU itself still had {} free when it failed: the limit came from a per-process cap (torch.cuda.set_per_process_memory_fraction) or another allocator setting, not from the card being full.",
        "失败时 GPU 本身仍有 {} 空闲：限制来自进程级上限（torch.cuda.set_per_process_memory_fraction）或其他分配器设置，而不是显卡已满。"),
    FragBlocked => (
        "{0} was reserved but unallocated, yet the largest free block was {1}: fragmentation kept the request from fitting. PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True lets such holes be reused.",
        "预留但未分配的显存有 {0}，但最大空闲块只有 {1}：内存碎片使请求无法放下。PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True 可以复用这些空洞。"),
    FragSmall => (
        "Only {0} was reserved but unallocated: fragmentation was not the cause, the memory was really in use.",
        "预留但未分配的显存只有 {0}：原因不是内存碎片，显存确实被占用了。"),
    HintEager => (
        "Eager softmax attention keeps every N x N probability matrix for backward; F.scaled_dot_product_attention (fused attention) does not.",
        "朴素 softmax 注意力为反向传播保留每个 N x N 概率矩阵；F.scaled_dot_product_attention（融合注意力）不会保留。"),
    HintActivations => (
        "Activations are {0} of it: gradient checkpointing of the repeated blocks, bf16 autocast or a smaller micro-batch (with gradient accumulation) shrink them.",
        "其中激活值占 {0}：对重复的模块使用梯度检查点、bf16 混合精度训练或更小的批次大小（配合梯度累积）都能减少它。"),
    HintOptimizer => (
        "Optimizer state is {0} of it: a fused or 8-bit optimizer, or sharding it across GPUs, reduces it.",
        "其中优化器状态占 {0}：融合或 8 位优化器、或跨 GPU 分片可以减少它。"),
    Memory => ("Memory in the snapshot", "快照中的显存"),
    Reserved => ("Reserved by PyTorch (segments)", "PyTorch 预留（段）"),
    Allocated => ("Allocated", "已分配"),
    Active => ("Active (incl. awaiting a stream)", "活跃（含等待流释放）"),
    Requested => ("Requested by the program", "程序请求的大小"),
    SegmentsBlocks => ("Segments / blocks", "段 / 块"),
    OomRequest => ("OOM request (rounded)", "OOM 请求（取整后）"),
    OomDeviceFree => ("Device free at the OOM", "OOM 时设备空闲"),
    OomCount => ("OOM events in the trace", "记录中的 OOM 次数"),
    Trace => ("Trace", "分配记录"),
    TraceValue => ("{0} entries ({1} allocs, {2} frees) over {3}", "{0} 条（{1} 次分配，{2} 次释放），时长 {3}"),
    TraceNone => ("none (memory history was not recorded)", "无（未开启显存历史记录）"),
    ByCategory => ("By category ({})", "按类别（{}）"),
    Sites => ("Top allocation sites ({})", "分配最多的代码位置（{}）"),
    SitesNone => ("No allocation has a Python frame of your own code (stacks were not recorded, or everything came from libraries).",
        "没有分配带有你自己代码的 Python 栈帧（未记录调用栈，或全部来自库）。"),
    LibSites => ("Inside libraries ({})", "库代码内部（{}）"),
    SourceLines => ("Source lines", "源代码行"),
    LibSitesText => ("Where your lines call into a library, the innermost library line that allocated:",
        "当你的代码调用第三方库时，库内部实际分配显存的最内层代码行："),
    ColBytes => ("memory", "显存"),
    ColShare => ("share", "占比"),
    ColSite => ("source line", "代码位置"),
    ColCategory => ("category", "类别"),
    ColWhat => ("what runs there", "该行执行的操作"),
    Fragmentation => ("Fragmentation", "内存碎片"),
    ReservedFree => ("Reserved but unallocated", "预留但未分配"),
    InactiveSplit => ("Inactive split blocks", "已拆分的空闲块"),
    LargestFree => ("Largest free block", "最大空闲块"),
    Releasable => ("Whole free segments (empty_cache returns them)", "完全空闲的段（empty_cache 可释放）"),
    FragRatio => ("Fragmentation (1 - largest free / all free)", "碎片程度（1 - 最大空闲块 / 全部空闲）"),
    BlocksIn => ("{0} in {1} blocks", "{1} 个块共 {0}"),
    Timeline => ("Timeline (allocated memory)", "时间线（已分配显存）"),
    FragSegments => ("Segments with the most free space:", "空闲空间最多的段："),
    ColSegment => ("segment", "段"),
    ColPool => ("pool", "池"),
    ColSize => ("size", "大小"),
    ColFree => ("free", "空闲"),
    ColFreeBlocks => ("free blocks", "空闲块数"),
    ColLargest => ("largest free block", "最大空闲块"),
    TimelinePeak => ("Peak {0} at {1}.", "峰值 {0}，时间 {1}。"),
    How => ("How the categories are inferred", "类别如何推断"),
    HowText => (
        "From each allocation's stack and lifetime: torch/optim frames are optimizer state (inside _init_group) or step temporaries; autograd-engine frames are gradients when the buffer outlives the backward pass, temporaries otherwise; Module.to/cuda/_apply, load_state_dict and nn.init are parameters; other Python stacks are activations when still alive when backward starts (or at the end), temporaries when freed before; no stack is unknown. A source line is the innermost frame of your own code (not site-packages, torch or the standard library).",
        "依据每次分配的调用栈和生命周期：torch/optim 中的帧为优化器状态（_init_group 内）或优化步骤中的临时张量；autograd 引擎中的帧若缓冲区在反向传播结束后仍存在则为梯度，否则为临时张量；Module.to/cuda/_apply、load_state_dict 和 nn.init 为模型参数；其他 Python 调用栈若在反向传播开始时（或记录结束时）仍存活则为激活值，提前释放则为临时张量；没有调用栈则为未知。代码位置取最内层属于你自己代码的帧（不含 site-packages、torch 和标准库）。"),
    CatParameters => ("parameters", "模型参数"),
    CatGradients => ("gradients", "梯度"),
    CatOptimizer => ("optimizer state", "优化器状态"),
    CatActivations => ("activations", "激活值"),
    CatTemporaries => ("temporaries", "临时张量"),
    CatUnknown => ("unknown", "未知"),
    PhaseForward => ("forward pass", "前向传播"),
    PhaseBackward => ("backward pass", "反向传播"),
    PhaseOptimizer => ("optimizer step", "优化器更新"),
    PhaseParameters => ("model setup", "模型加载"),
    PhaseUnknown => ("program", "程序运行"),
    KindEager => ("eager softmax-attention", "朴素 softmax 注意力"),
    KindFused => ("fused attention", "融合注意力"),
    KindMlp => ("MLP", "MLP"),
    KindLinear => ("linear", "线性层"),
    KindConv => ("convolution", "卷积"),
    KindNorm => ("normalization", "归一化"),
    KindEmbedding => ("embedding", "嵌入"),
    KindLoss => ("loss", "损失函数"),
    Lines => ("lines {}", "第 {} 行"),
    LineOne => ("line {}", "第 {} 行"),
}}

pub fn category_name(c: Category, lang: Lang) -> &'static str {
    match c {
        Category::Parameters => W::CatParameters,
        Category::Gradients => W::CatGradients,
        Category::OptimizerState => W::CatOptimizer,
        Category::Activations => W::CatActivations,
        Category::Temporaries => W::CatTemporaries,
        Category::Unknown => W::CatUnknown,
    }
    .text(lang)
}

fn phase_name(p: Phase, lang: Lang) -> &'static str {
    match p {
        Phase::Forward => W::PhaseForward,
        Phase::Backward => W::PhaseBackward,
        Phase::Optimizer => W::PhaseOptimizer,
        Phase::Parameters => W::PhaseParameters,
        Phase::Unknown => W::PhaseUnknown,
    }
    .text(lang)
}

pub fn kind_name(k: SiteKind, lang: Lang) -> Option<&'static str> {
    Some(
        match k {
            SiteKind::EagerAttention => W::KindEager,
            SiteKind::FusedAttention => W::KindFused,
            SiteKind::Mlp => W::KindMlp,
            SiteKind::Linear => W::KindLinear,
            SiteKind::Convolution => W::KindConv,
            SiteKind::Normalization => W::KindNorm,
            SiteKind::Embedding => W::KindEmbedding,
            SiteKind::Loss => W::KindLoss,
            SiteKind::Other => return None,
        }
        .text(lang),
    )
}

/// A short file name for sentences and tables (JSON keeps the full path): the path inside the
/// package for installed libraries (`transformers/activations.py`), else the last component.
pub fn short(path: &str) -> &str {
    if let Some(i) = path.rfind("-packages/") {
        return &path[i + "-packages/".len()..];
    }
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// GiB with one decimal, for the headline sentence.
fn gib1(n: u64) -> String {
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else {
        bytes(n)
    }
}

fn pct0(r: f64) -> String {
    format!("{:.0}%", r * 100.0)
}

fn seconds(us: i64, lang: Lang) -> String {
    let s = format!("{:.2}", us as f64 / 1e6);
    match lang {
        Lang::En => format!("{s} s"),
        Lang::Zh => format!("{s} 秒"),
    }
}

fn lines_text(lines: &[i64], lang: Lang) -> String {
    if lines.len() == 1 {
        return fill(W::LineOne.text(lang), &[&lines[0]]);
    }
    let contiguous = lines.windows(2).all(|w| w[1] == w[0] + 1);
    let t = if contiguous && lines.len() > 1 {
        format!("{}–{}", lines[0], lines[lines.len() - 1])
    } else {
        lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    fill(W::Lines.text(lang), &[&t])
}

fn site_ref(s: &Site) -> String {
    format!("{}:{}", short(&s.file), s.line)
}

fn moment_words(a: &Analysis, lang: Lang) -> &'static str {
    match a.moment.kind {
        MomentKind::Oom => W::AtOom,
        MomentKind::Peak => W::AtPeak,
        MomentKind::Snapshot => W::AtSnapshot,
    }
    .text(lang)
}

/// The plain answer: what happened and where the memory went (one paragraph per point).
pub fn answer(a: &Analysis, lang: Lang) -> Vec<String> {
    let mut out = Vec::new();
    match (&a.oom, a.moment.kind) {
        (Some(o), _) => {
            let lead = match &o.site {
                Some(s) => fill(
                    W::OomLead.text(lang),
                    &[
                        &bytes(o.requested_bytes),
                        &phase_name(o.phase, lang),
                        &format!("{}:{} {}", short(&s.file), s.line, s.function),
                        &bytes(a.moment.allocated_bytes),
                        &bytes(a.moment.reserved_bytes),
                    ],
                ),
                None => fill(
                    W::OomLeadNoSite.text(lang),
                    &[
                        &bytes(o.requested_bytes),
                        &phase_name(o.phase, lang),
                        &bytes(a.moment.allocated_bytes),
                        &bytes(a.moment.reserved_bytes),
                    ],
                ),
            };
            out.push(lead);
        }
        (None, MomentKind::Peak) => out.push(fill(
            W::PeakLead.text(lang),
            &[
                &bytes(a.moment.allocated_bytes),
                &bytes(a.moment.reserved_bytes),
                &a.moment
                    .time_us
                    .zip(a.timeline.start_time_us)
                    .map(|(t, t0)| seconds(t - t0, lang))
                    .unwrap_or_else(|| format!("#{}", a.moment.trace_index.unwrap_or(0))),
            ],
        )),
        _ => out.push(fill(
            W::SnapshotLead.text(lang),
            &[&bytes(a.allocated_bytes), &bytes(a.reserved_bytes)],
        )),
    }

    // Where it went.
    let total = a.moment.allocated_bytes;
    if let Some(sc) = &a.scope {
        let mut s = match (&sc.callee_function, &sc.callee_file) {
            (Some(func), Some(file)) => fill(
                W::ScopeInside.text(lang),
                &[
                    &pct0(sc.share),
                    &moment_words(a, lang),
                    &gib1(sc.bytes),
                    &gib1(total),
                    &sc.callee_qualname.as_deref().unwrap_or(func),
                    &format!("{} {}", short(file), lines_text(&sc.callee_lines, lang)),
                    &sc.caller.function,
                    &format!("{}:{}", short(&sc.caller.file), sc.caller.line),
                ],
            ),
            _ => fill(
                W::ScopeAt.text(lang),
                &[
                    &pct0(sc.share),
                    &moment_words(a, lang),
                    &gib1(sc.bytes),
                    &gib1(total),
                    &format!("{}:{}", short(&sc.caller.file), sc.caller.line),
                    &sc.caller.function,
                ],
            ),
        };
        if let (Some(q), Some(o)) = (&sc.outer_qualname, &sc.outer) {
            if sc.callee_function.is_some() && q.contains('.') {
                s.push_str(&fill(
                    W::ScopeOuter.text(lang),
                    &[&q, &format!("{}:{}", short(&o.file), o.line)],
                ));
            }
        }
        // The big lines inside the scope (at least 10% of the memory each).
        let big: Vec<String> = a
            .top_sites
            .iter()
            .filter(|st| st.share >= 0.10)
            .take(3)
            .map(|st| match st.kind.and_then(|k| kind_name(k, lang)) {
                Some(k) => fill(W::LineAt.text(lang), &[&gib1(st.bytes), &k, &site_ref(st)]),
                None => fill(W::LinePlain.text(lang), &[&gib1(st.bytes), &site_ref(st)]),
            })
            .collect();
        let leaf_only = sc.callee_function.is_none()
            && big.len() == 1
            && a.top_sites
                .first()
                .is_some_and(|t| t.line == sc.caller.line && t.file == sc.caller.file);
        if big.is_empty() || leaf_only {
            s.push('.');
        } else {
            s.push_str(&fill(
                W::BiggestLines.text(lang),
                &[&big.join(W::And.text(lang))],
            ));
        }
        out.push(s);
    } else if let Some(t) = a.top_sites.first() {
        let what = t
            .kind
            .and_then(|k| kind_name(k, lang))
            .unwrap_or(t.function.as_str());
        out.push(fill(
            W::TopLine.text(lang),
            &[&site_ref(t), &gib1(t.bytes), &what],
        ));
    }

    // Why it did not fit, when there was an OOM.
    if let Some(o) = &a.oom {
        if o.reserved_free_bytes >= o.requested_bytes
            && o.largest_free_block_bytes > 0
            && o.largest_free_block_bytes < o.requested_bytes
        {
            out.push(fill(
                W::FragBlocked.text(lang),
                &[
                    &bytes(o.reserved_free_bytes),
                    &bytes(o.largest_free_block_bytes),
                ],
            ));
        } else if o.reserved_free_bytes < o.requested_bytes {
            out.push(fill(
                W::FragSmall.text(lang),
                &[&bytes(o.reserved_free_bytes)],
            ));
        }
        if o.device_free_bytes >= o.requested_bytes {
            out.push(fill(
                W::DeviceFree.text(lang),
                &[&bytes(o.device_free_bytes)],
            ));
        }
    }

    // What shrinks it, from what was found.
    let denom = total.max(1) as f64;
    if a.top_sites
        .iter()
        .any(|s| s.kind == Some(SiteKind::EagerAttention) && s.share >= 0.05)
    {
        out.push(W::HintEager.text(lang).to_string());
    }
    let act = a.categories.activations as f64 / denom;
    if act >= 0.5 {
        out.push(fill(W::HintActivations.text(lang), &[&pct0(act)]));
    }
    let opt = a.categories.optimizer_state as f64 / denom;
    if opt >= 0.25 {
        out.push(fill(W::HintOptimizer.text(lang), &[&pct0(opt)]));
    }
    out
}

/// Builds the report document.
pub fn document(a: &Analysis, file: &str, lang: Lang) -> Document {
    let mut d = Document::new();
    d.heading(1, fill(W::Title.text(lang), &[&file]));
    d.heading(2, W::Answer.text(lang));
    for p in answer(a, lang) {
        d.para(p);
    }

    d.heading(2, W::Memory.text(lang));
    let mut kv = vec![
        (W::Reserved.text(lang).to_string(), bytes(a.reserved_bytes)),
        (
            W::Allocated.text(lang).to_string(),
            bytes(a.allocated_bytes),
        ),
        (W::Active.text(lang).to_string(), bytes(a.active_bytes)),
        (
            W::Requested.text(lang).to_string(),
            bytes(a.requested_bytes),
        ),
        (
            W::SegmentsBlocks.text(lang).to_string(),
            format!("{} / {}", a.segments, a.blocks),
        ),
    ];
    if let Some(o) = &a.oom {
        kv.push((
            W::OomRequest.text(lang).to_string(),
            bytes(o.requested_bytes),
        ));
        kv.push((
            W::OomDeviceFree.text(lang).to_string(),
            bytes(o.device_free_bytes),
        ));
        if o.count > 1 {
            kv.push((W::OomCount.text(lang).to_string(), o.count.to_string()));
        }
    }
    let trace = if a.trace.entries == 0 {
        W::TraceNone.text(lang).to_string()
    } else {
        fill(
            W::TraceValue.text(lang),
            &[
                &a.trace.entries,
                &a.trace.allocs,
                &a.trace.frees,
                &a.trace
                    .duration_us
                    .map(|u| seconds(u, lang))
                    .unwrap_or_else(|| "?".into()),
            ],
        )
    };
    kv.push((W::Trace.text(lang).to_string(), trace));
    d.kv(kv);

    d.heading(2, fill(W::ByCategory.text(lang), &[&moment_words(a, lang)]));
    let denom = a.moment.allocated_bytes.max(1) as f64;
    let rows: Vec<(String, f64, String)> = Category::ALL
        .iter()
        .map(|&c| {
            let v = a.categories.get(c);
            (
                category_name(c, lang).to_string(),
                v as f64,
                format!("{} ({})", bytes(v), pct(v as f64 / denom)),
            )
        })
        .collect();
    d.bars(rows);

    d.heading(2, fill(W::Sites.text(lang), &[&moment_words(a, lang)]));
    if a.top_sites.is_empty() {
        d.para(W::SitesNone.text(lang));
    } else {
        site_table(&mut d, &a.top_sites, lang);
    }

    let quoted: Vec<String> = a
        .top_sites
        .iter()
        .filter_map(|s| {
            let code = s.code.as_ref()?;
            let q = s.qualname.as_deref().unwrap_or(&s.function);
            Some(format!("{}:{} ({q}): {code}", short(&s.file), s.line))
        })
        .take(8)
        .collect();
    if !quoted.is_empty() {
        d.heading(2, W::SourceLines.text(lang));
        d.code("text", quoted.join("\n"));
    }

    if !a.library_sites.is_empty() {
        d.heading(2, fill(W::LibSites.text(lang), &[&moment_words(a, lang)]));
        d.para(W::LibSitesText.text(lang));
        site_table(&mut d, &a.library_sites, lang);
    }

    d.heading(2, W::Fragmentation.text(lang));
    let f = &a.fragmentation;
    d.kv(vec![
        (
            W::ReservedFree.text(lang).to_string(),
            bytes(f.reserved_unallocated_bytes),
        ),
        (
            W::InactiveSplit.text(lang).to_string(),
            fill(
                W::BlocksIn.text(lang),
                &[&bytes(f.inactive_split_bytes), &f.inactive_split_blocks],
            ),
        ),
        (
            W::LargestFree.text(lang).to_string(),
            bytes(f.largest_free_block_bytes),
        ),
        (
            W::Releasable.text(lang).to_string(),
            bytes(f.releasable_bytes),
        ),
        (
            W::FragRatio.text(lang).to_string(),
            pct(f.fragmentation_ratio),
        ),
    ]);

    if !f.segments.is_empty() {
        d.para(W::FragSegments.text(lang));
        let rows = f
            .segments
            .iter()
            .take(5)
            .map(|s| {
                vec![
                    format!("0x{:x}", s.address),
                    s.segment_type.clone(),
                    bytes(s.total_size),
                    bytes(s.free_bytes),
                    s.free_blocks.to_string(),
                    bytes(s.largest_free_block_bytes),
                ]
            })
            .collect();
        d.table(
            vec![
                W::ColSegment.text(lang).into(),
                W::ColPool.text(lang).into(),
                W::ColSize.text(lang).into(),
                W::ColFree.text(lang).into(),
                W::ColFreeBlocks.text(lang).into(),
                W::ColLargest.text(lang).into(),
            ],
            rows,
        );
    }

    if a.timeline.points.len() > 1 {
        d.heading(2, W::Timeline.text(lang));
        let n = 12usize.min(a.timeline.points.len());
        let pts = &a.timeline.points;
        let rows: Vec<(String, f64, String)> = (0..n)
            .map(|i| {
                let j = i * (pts.len() - 1) / (n - 1).max(1);
                let p = &pts[j];
                let label = if a.timeline.unit == "us" {
                    seconds(p.t, lang)
                } else {
                    format!("#{}", p.t)
                };
                (label, p.allocated as f64, bytes(p.allocated))
            })
            .collect();
        d.bars(rows);
        let when = if a.timeline.unit == "us" {
            seconds(a.timeline.peak_t, lang)
        } else {
            format!("#{}", a.timeline.peak_t)
        };
        d.para(fill(
            W::TimelinePeak.text(lang),
            &[&bytes(a.timeline.peak_allocated_bytes), &when],
        ));
    }

    d.heading(2, W::How.text(lang));
    d.para(W::HowText.text(lang));
    d
}

fn site_table(d: &mut Document, sites: &[Site], lang: Lang) {
    let rows = sites
        .iter()
        .map(|s| {
            let mut what = s
                .kind
                .and_then(|k| kind_name(k, lang))
                .map(|k| k.to_string())
                .unwrap_or_default();
            let ops: Vec<&str> = s.ops.iter().take(3).map(|o| o.op.as_str()).collect();
            if !ops.is_empty() {
                if !what.is_empty() {
                    what.push_str(": ");
                }
                what.push_str(&ops.join(", "));
            }
            vec![
                bytes(s.bytes),
                pct(s.share),
                format!("{}:{} {}", short(&s.file), s.line, s.function),
                category_name(s.category, lang).to_string(),
                what,
            ]
        })
        .collect();
    d.table(
        vec![
            W::ColBytes.text(lang).into(),
            W::ColShare.text(lang).into(),
            W::ColSite.text(lang).into(),
            W::ColCategory.text(lang).into(),
            W::ColWhat.text(lang).into(),
        ],
        rows,
    );
}
