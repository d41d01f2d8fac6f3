//! `oomdoc probe`: where the Python probe is (`--path`), and a check of a trace it wrote (`--check`).
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::trace;
use crate::report::{Ctx, Document, Format};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Print the absolute path of the directory that holds the probe package `oomdoc_probe`
    /// (use it as PYTHONPATH, or `pip install` it).
    #[arg(long)]
    pub path: bool,
    /// Read a trace written by the probe and summarise it (exit 2 if it cannot be read).
    #[arg(long, value_name = "TRACE")]
    pub check: Option<PathBuf>,
}

/// The probe's sources, embedded so that an installed binary can always provide them.
const SOURCES: [(&str, &str); 4] = [
    (
        "pyproject.toml",
        include_str!("../../python/pyproject.toml"),
    ),
    (
        "oomdoc_probe/__init__.py",
        include_str!("../../python/oomdoc_probe/__init__.py"),
    ),
    (
        "oomdoc_probe/_recorder.py",
        include_str!("../../python/oomdoc_probe/_recorder.py"),
    ),
    (
        "oomdoc_probe/_autocast.py",
        include_str!("../../python/oomdoc_probe/_autocast.py"),
    ),
];

fn has_probe(dir: &Path) -> bool {
    dir.join("oomdoc_probe").join("__init__.py").is_file()
}

/// The directory holding `oomdoc_probe/`: the source tree when there is one (next to the
/// executable or where it was built), else a copy of the embedded sources in the cache directory.
pub fn probe_dir() -> anyhow::Result<PathBuf> {
    if let Ok(d) = std::env::var("OOMDOC_PROBE_DIR") {
        let d = PathBuf::from(d);
        if has_probe(&d) {
            return Ok(std::fs::canonicalize(&d).unwrap_or(d));
        }
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
        for anc in exe.ancestors().skip(1).take(4) {
            candidates.push(anc.join("python"));
            candidates.push(anc.join("share").join("oomdoc").join("python"));
        }
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python"));
    for c in candidates {
        if has_probe(&c) && same_sources(&c) {
            return Ok(std::fs::canonicalize(&c).unwrap_or(c));
        }
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base
        .join("oomdoc")
        .join(format!("probe-{}", env!("CARGO_PKG_VERSION")))
        .join("python");
    if !same_sources(&dir) {
        for (rel, text) in SOURCES {
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", parent.display()))?;
            }
            crate::report::write_atomic(&p, text.as_bytes())?;
        }
    }
    Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
}

fn same_sources(dir: &Path) -> bool {
    SOURCES
        .iter()
        .all(|(rel, text)| std::fs::read_to_string(dir.join(rel)).is_ok_and(|s| s == *text))
}

#[derive(Serialize)]
struct RunSummary {
    name: String,
    batch: u64,
    events: usize,
    allocations: usize,
    allocated_bytes: u64,
    persistent: usize,
    attention_regions: usize,
}

#[derive(Serialize)]
struct TraceSummary {
    path: String,
    version: u64,
    producer: String,
    torch: String,
    autocast: Vec<String>,
    optimizers: Vec<String>,
    runs: Vec<RunSummary>,
    untraced: Vec<String>,
}

crate::catalogue! {
    enum W {
        Title => ("Trace {}", "追踪文件 {}"),
        Version => ("format version", "格式版本"),
        Producer => ("written by", "生成者"),
        Torch => ("torch", "torch"),
        Autocast => ("autocast", "自动混合精度"),
        NoAutocast => ("none (fp32 or the model's own dtype)", "无（fp32 或模型自身的数据类型）"),
        Optimizers => ("optimizers", "优化器"),
        Step => ("step", "步骤"),
        Batch => ("batch", "批大小"),
        Events => ("events", "事件数"),
        Allocs => ("allocations", "分配次数"),
        Bytes => ("bytes allocated", "分配字节"),
        Regions => ("attention calls", "注意力调用"),
        Untraced => ("Ops the probe could not trace", "探针无法追踪的算子"),
        AllTraced => ("Every op was traced.", "所有算子均已追踪。"),
    }
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    if let Some(path) = &args.check {
        let t = trace::load(path)?;
        let runs = t
            .runs
            .iter()
            .map(|r| {
                let (mut n, mut bytes) = (0, 0);
                for e in &r.events {
                    if let trace::Event::Alloc { bytes: b, .. } = e {
                        n += 1;
                        bytes += b;
                    }
                }
                RunSummary {
                    name: r.name.clone(),
                    batch: r.batch,
                    events: r.events.len(),
                    allocations: n,
                    allocated_bytes: bytes,
                    persistent: r.persistent.len(),
                    attention_regions: r.regions.len(),
                }
            })
            .collect();
        let mut untraced: Vec<String> = Vec::new();
        for r in &t.runs {
            for u in &r.untraced {
                let s = format!("{} ({}, {}x)", u.op, u.reason, u.count);
                if !untraced.contains(&s) {
                    untraced.push(s);
                }
            }
        }
        let s = TraceSummary {
            path: path.display().to_string(),
            version: t.version,
            producer: t.producer.clone(),
            torch: t.torch.clone(),
            autocast: t.autocast.clone(),
            optimizers: t.optimizers.clone(),
            runs,
            untraced,
        };
        ctx.emit(&s, |lang| {
            let mut d = Document::new();
            d.heading(1, crate::report::fill(W::Title.text(lang), &[&s.path]));
            d.kv(vec![
                (W::Version.text(lang).into(), s.version.to_string()),
                (W::Producer.text(lang).into(), s.producer.clone()),
                (W::Torch.text(lang).into(), s.torch.clone()),
                (
                    W::Autocast.text(lang).into(),
                    if s.autocast.is_empty() {
                        W::NoAutocast.text(lang).into()
                    } else {
                        s.autocast.join(", ")
                    },
                ),
                (W::Optimizers.text(lang).into(), s.optimizers.join(", ")),
            ]);
            d.table(
                vec![
                    W::Step.text(lang).into(),
                    W::Batch.text(lang).into(),
                    W::Events.text(lang).into(),
                    W::Allocs.text(lang).into(),
                    W::Bytes.text(lang).into(),
                    W::Regions.text(lang).into(),
                ],
                s.runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.name.clone(),
                            r.batch.to_string(),
                            r.events.to_string(),
                            r.allocations.to_string(),
                            crate::report::units::bytes(r.allocated_bytes),
                            r.attention_regions.to_string(),
                        ]
                    })
                    .collect(),
            );
            if s.untraced.is_empty() {
                d.para(W::AllTraced.text(lang));
            } else {
                d.heading(2, W::Untraced.text(lang));
                d.bullets(s.untraced.clone());
            }
            d
        })?;
        return Ok(0);
    }
    let dir = probe_dir()?;
    let p = dir.display().to_string();
    match ctx.format {
        Format::Json => ctx.emit(&serde_json::json!({ "path": p }), |_| Document::new())?,
        _ => ctx.write(format!("{p}\n").as_bytes())?,
    }
    Ok(0)
}
