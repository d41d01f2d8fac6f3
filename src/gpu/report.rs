//! Reports of `oomdoc gpu` (the local GPUs) and `oomdoc gpu --list` (the built-in catalogue).
use serde::Serialize;

use super::catalogue::GpuSpec;
use super::nvml::GpuReport;
use crate::report::units::{bytes, gib};
use crate::report::{fill, Document, Lang};

crate::catalogue! {
    pub enum W {
        Title => ("GPUs on this machine", "本机 GPU"),
        NoGpu => ("No GPU information: {}.", "无法获取 GPU 信息：{}。"),
        Driver => ("driver", "驱动"),
        CudaDriver => ("CUDA (driver)", "CUDA（驱动）"),
        Gpu => ("GPU {0}: {1}", "GPU {0}：{1}"),
        Total => ("total", "总显存"),
        Free => ("free", "空闲"),
        Used => ("used", "已用"),
        Cc => ("compute capability", "计算能力"),
        Bf16 => ("bf16", "bf16"),
        Yes => ("yes", "支持"),
        No => ("no", "不支持"),
        Unknown => ("unknown", "未知"),
        Catalogue => ("catalogue entry", "目录条目"),
        Processes => ("Processes", "进程"),
        NoProcesses => ("No process is using this GPU.", "没有进程在使用此 GPU。"),
        Pid => ("PID", "PID"),
        Name => ("name", "名称"),
        Memory => ("GPU memory", "显存"),
        NotReported => ("not reported", "未报告"),
        ListTitle => ("Built-in GPU catalogue", "内置 GPU 目录"),
        ListIntro => (
            "Memory as PyTorch reports it (the \"total capacity\" of its OOM messages); peak dense tensor-core rates with fp32 accumulation. Use an id with --gpu.",
            "显存为 PyTorch 报告的数值（OOM 信息中的 \"total capacity\"）；算力为厂商标称的稠密张量核心峰值（fp32 累加）。在 --gpu 中使用 id。"
        ),
        Id => ("id", "id"),
        Vendor => ("vendor", "厂商"),
        Bw => ("bandwidth GB/s", "带宽 GB/s"),
    }
}

/// The local GPUs.
pub fn local_doc(r: &GpuReport, lang: Lang) -> Document {
    let mut d = Document::new();
    d.heading(1, W::Title.text(lang));
    if r.gpus.is_empty() {
        let why = r.reason.as_deref().unwrap_or("-");
        d.para(fill(W::NoGpu.text(lang), &[&why]));
        return d;
    }
    let mut kv = Vec::new();
    if let Some(v) = &r.driver_version {
        kv.push((W::Driver.text(lang).to_string(), v.clone()));
    }
    if let Some(v) = &r.cuda_driver_version {
        kv.push((W::CudaDriver.text(lang).to_string(), v.clone()));
    }
    if !kv.is_empty() {
        d.kv(kv);
    }
    for g in &r.gpus {
        d.heading(2, fill(W::Gpu.text(lang), &[&g.index, &g.name]));
        let yes_no = |b: Option<bool>| match b {
            Some(true) => W::Yes.text(lang),
            Some(false) => W::No.text(lang),
            None => W::Unknown.text(lang),
        };
        let mut kv = vec![
            (W::Total.text(lang).to_string(), bytes(g.total_bytes)),
            (W::Free.text(lang).to_string(), bytes(g.free_bytes)),
            (W::Used.text(lang).to_string(), bytes(g.used_bytes)),
            (
                W::Cc.text(lang).to_string(),
                g.compute_capability
                    .map(|(a, b)| format!("{a}.{b}"))
                    .unwrap_or_else(|| W::Unknown.text(lang).to_string()),
            ),
            (W::Bf16.text(lang).to_string(), yes_no(g.bf16).to_string()),
        ];
        if let Some(id) = g.catalogue_id {
            kv.push((W::Catalogue.text(lang).to_string(), id.to_string()));
        }
        d.kv(kv);
        if g.processes.is_empty() {
            d.para(W::NoProcesses.text(lang));
        } else {
            d.heading(3, W::Processes.text(lang));
            let rows = g
                .processes
                .iter()
                .map(|p| {
                    vec![
                        p.pid.to_string(),
                        p.name.clone().unwrap_or_default(),
                        p.used_bytes
                            .map(bytes)
                            .unwrap_or_else(|| W::NotReported.text(lang).to_string()),
                    ]
                })
                .collect();
            d.table(
                vec![
                    W::Pid.text(lang).into(),
                    W::Name.text(lang).into(),
                    W::Memory.text(lang).into(),
                ],
                rows,
            );
        }
    }
    d
}

/// JSON of `gpu --list`.
#[derive(Serialize)]
pub struct CatalogueJson<'a> {
    pub catalogue: &'a [GpuSpec],
}

fn rate(x: f64) -> String {
    if x == 0.0 {
        "-".into()
    } else {
        format!("{x}")
    }
}

/// The built-in catalogue as a table.
pub fn catalogue_doc(list: &[GpuSpec], lang: Lang) -> Document {
    let mut d = Document::new();
    d.heading(1, W::ListTitle.text(lang));
    d.para(W::ListIntro.text(lang));
    let rows = list
        .iter()
        .map(|g| {
            vec![
                g.id.to_string(),
                g.name.to_string(),
                gib(g.memory_bytes),
                format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                if g.bf16 { W::Yes } else { W::No }.text(lang).to_string(),
                rate(g.bf16_tflops),
                rate(g.fp16_tflops),
                rate(g.tf32_tflops),
                rate(g.fp32_tflops),
                rate(g.bandwidth_gbs),
            ]
        })
        .collect();
    d.table(
        vec![
            W::Id.text(lang).into(),
            W::Name.text(lang).into(),
            W::Memory.text(lang).into(),
            W::Cc.text(lang).into(),
            "bf16".into(),
            "bf16 TFLOP/s".into(),
            "fp16 TFLOP/s".into(),
            "tf32 TFLOP/s".into(),
            "fp32 TFLOP/s".into(),
            W::Bw.text(lang).into(),
        ],
        rows,
    );
    d
}
