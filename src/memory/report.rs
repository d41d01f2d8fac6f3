//! The `estimate` report: component table and bar chart, in English and Chinese.
use super::{Estimate, Phase};
use crate::report::units::{bytes, gib, pct};
use crate::report::{fill, Document, Lang};

crate::catalogue! {
    pub enum W {
        Title => ("Peak GPU memory of one training step", "单个训练步的 GPU 显存峰值"),
        Model => ("model", "模型"),
        Params => ("parameters", "参数量"),
        Trainable => ("trainable", "可训练"),
        Config => ("configuration", "配置"),
        PeakAlloc => ("peak allocated", "峰值已分配"),
        PeakReserved => ("peak reserved", "峰值已预留"),
        DeviceTotal => ("device total (reserved + outside PyTorch)", "设备总占用（预留 + PyTorch 之外）"),
        PeakAt => ("peak reached", "峰值出现在"),
        Components => ("Components at the peak", "峰值时的组成"),
        Component => ("component", "组成"),
        Size => ("size", "大小"),
        Share => ("share", "占比"),
        CParameters => ("parameters (weights, buffers)", "参数（权重、缓冲区）"),
        CGradients => ("gradients", "梯度"),
        COptimizer => ("optimizer state", "优化器状态"),
        CActivations => ("activations (saved for backward, autocast weight copies)", "激活（为反向保存的张量、autocast 权重副本）"),
        CTransient => ("transient (gradients of activations, temporaries)", "临时张量（激活梯度、中间结果）"),
        CWorkspace => ("cuBLAS/cuDNN workspace", "cuBLAS/cuDNN 工作区"),
        CBatch => ("input batch", "输入批次"),
        COutside => ("outside PyTorch (CUDA context, libraries)", "PyTorch 之外（CUDA 上下文、库）"),
        COverhead => ("allocator overhead (reserved - allocated)", "分配器开销（预留 - 已分配）"),
        Forward => ("the forward pass", "前向传播"),
        Backward => ("the backward pass", "反向传播"),
        OptStep => ("the optimizer step", "优化器更新"),
        Fits => ("Fits {0}: {1} of {2}, {3} to spare.", "可以放入 {0}：占用 {1} / {2}，余量 {3}。"),
        FitsTight => (
            "Fits {0} by the estimate ({1} of {2}), but the {3} to spare are less than the estimate's error margin, {4} ({5} of the estimate): it may still run out of memory. `oomdoc plan` finds configurations with room to spare.",
            "按估算可以放入 {0}（占用 {1} / {2}），但余量 {3} 小于估算的误差余量 {4}（估算值的 {5}）：仍可能显存不足。`oomdoc plan` 可以找出留有余量的配置。"
        ),
        NoFit => ("Does not fit {0}: needs {1}, the GPU has {2} (short by {3}).", "放不下 {0}：需要 {1}，GPU 只有 {2}（差 {3}）。"),
        Gpu => ("GPU", "GPU"),
        ConfigLine => (
            "batch {0} x accum {1}, {2}, checkpointing {3}, attention {4}, {5}",
            "批大小 {0} x 梯度累积 {1}，{2}，激活检查点 {3}，注意力 {4}，{5}"
        ),
        Note => ("Analytic estimate (no GPU used); see docs/accuracy.md for its measured error.", "解析估算（未使用 GPU）；实测误差见 docs/accuracy.md。"),
        TraceNote => ("Traced estimate: the probe's CPU trace replayed through the caching-allocator simulation (no GPU used); see docs/accuracy.md for its measured error.", "追踪估算：探针在CPU上记录的追踪经缓存分配器模拟重放（未使用 GPU）；实测误差见 docs/accuracy.md。"),
    }
}

pub fn document(e: &Estimate, lang: Lang) -> Document {
    let mut d = Document::new();
    d.heading(1, W::Title.text(lang));
    let k = &e.workload.knobs;
    let name = |v: serde_json::Value| v.as_str().map(str::to_string).unwrap_or_default();
    let mut cfg = fill(
        W::ConfigLine.text(lang),
        &[
            &k.batch,
            &k.grad_accum,
            &k.precision.name(),
            &name(serde_json::to_value(k.checkpointing).unwrap_or_default()),
            &name(serde_json::to_value(k.attention).unwrap_or_default()),
            &k.optimizer.name(),
        ],
    );
    if !k.checkpoint_modules.is_empty() {
        cfg.push_str(&format!(" ({})", k.checkpoint_modules.join(",")));
    }
    if let Some(s) = e.workload.seq_len {
        cfg.push_str(&format!(", seq {s}"));
    }
    if let Some(s) = e.workload.image_size {
        cfg.push_str(&format!(", image {s}"));
    }
    let phase = match e.peak_phase {
        Phase::Forward => W::Forward,
        Phase::Backward => W::Backward,
        Phase::OptimizerStep => W::OptStep,
    };
    d.kv(vec![
        (
            W::Model.text(lang).into(),
            format!("{} ({})", e.workload.name, e.workload.source),
        ),
        (
            W::Params.text(lang).into(),
            format!(
                "{} ({} {})",
                group(e.workload.params),
                W::Trainable.text(lang),
                group(e.workload.trainable_params)
            ),
        ),
        (W::Config.text(lang).into(), cfg),
        (W::PeakAlloc.text(lang).into(), gib(e.peak_allocated_bytes)),
        (
            W::PeakReserved.text(lang).into(),
            gib(e.peak_reserved_bytes),
        ),
        (W::DeviceTotal.text(lang).into(), gib(e.device_total_bytes)),
        (W::PeakAt.text(lang).into(), phase.text(lang).into()),
    ]);
    if let Some(g) = &e.gpu {
        let line = if e.fits == Some(true) {
            let spare = bytes(g.headroom_bytes.max(0) as u64);
            let need = gib(e.device_total_bytes);
            let has = gib(g.memory_bytes);
            if super::fits_with_margin(e.device_total_bytes, g.memory_bytes) {
                fill(W::Fits.text(lang), &[&g.name, &need, &has, &spare])
            } else {
                let m = super::ESTIMATOR_MARGIN;
                let margin = bytes((e.device_total_bytes as f64 * m) as u64);
                fill(
                    W::FitsTight.text(lang),
                    &[&g.name, &need, &has, &spare, &margin, &pct(m)],
                )
            }
        } else {
            fill(
                W::NoFit.text(lang),
                &[
                    &g.name,
                    &gib(e.device_total_bytes),
                    &gib(g.memory_bytes),
                    &bytes((-g.headroom_bytes).max(0) as u64),
                ],
            )
        };
        d.para(line);
    }
    d.heading(2, W::Components.text(lang));
    let c = &e.components;
    let rows = [
        (W::CParameters, c.parameters),
        (W::CGradients, c.gradients),
        (W::COptimizer, c.optimizer_state),
        (W::CActivations, c.activations),
        (W::CTransient, c.transient),
        (W::CWorkspace, c.workspace),
        (W::CBatch, c.batch),
        (W::COutside, c.outside_pytorch),
        (W::COverhead, c.allocator_overhead),
    ];
    let total = e.device_total_bytes.max(1) as f64;
    d.bars(
        rows.iter()
            .map(|(w, v)| {
                (
                    w.text(lang).to_string(),
                    *v as f64,
                    format!("{} ({})", gib(*v), pct(*v as f64 / total)),
                )
            })
            .collect(),
    );
    let traced = e.workload.source.starts_with("trace:");
    d.para(if traced { W::TraceNote } else { W::Note }.text(lang));
    d
}

/// 82190596 -> "82,190,596".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
