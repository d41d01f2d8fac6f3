//! `oomdoc validate`: the estimate of every row of a measurement file against what was measured.
use std::path::Path;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::knobs::KnobArgs;

/// The flags a row's `estimate_args` may use (those of `oomdoc estimate`).
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub(crate) struct RowArgs {
    #[arg(long)]
    pub(crate) model: String,
    #[command(flatten)]
    pub(crate) knobs: KnobArgs,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RowResult {
    /// 1-based line in the file.
    pub line: usize,
    pub label: String,
    pub estimate_args: String,
    pub measured_alloc: u64,
    pub measured_reserved: u64,
    pub estimated_alloc: u64,
    pub estimated_reserved: u64,
    /// (estimated - measured) / measured.
    pub error_alloc: f64,
    pub error_reserved: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub line: usize,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct ErrorStats {
    pub median_abs: f64,
    pub p90_abs: f64,
    pub max_abs: f64,
    /// Rows estimated more than 5% below the measurement (a crash for the user).
    pub under_beyond_5pct: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Validation {
    pub file: String,
    pub rows: Vec<RowResult>,
    pub skipped: Vec<Skipped>,
    pub alloc: ErrorStats,
    pub reserved: ErrorStats,
}

/// An under-estimate beyond this is counted (the issue's threshold).
pub const UNDER_THRESHOLD: f64 = 0.05;

pub fn stats(errs: &[f64]) -> ErrorStats {
    if errs.is_empty() {
        return ErrorStats::default();
    }
    let mut a: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
    a.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
    let q = |p: f64| {
        // linear interpolation between order statistics (numpy's default)
        let pos = p * (a.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        a[lo] + (a[hi] - a[lo]) * (pos - lo as f64)
    };
    ErrorStats {
        median_abs: q(0.5),
        p90_abs: q(0.9),
        max_abs: a[a.len() - 1],
        under_beyond_5pct: errs.iter().filter(|e| **e < -UNDER_THRESHOLD).count(),
    }
}

pub fn validate_file(path: &Path) -> Result<Validation> {
    validate_file_with(path, super::ReservedModel::Replay)
}

/// `validate_file` with a choice of reserved-memory model (`estimate_fast` uses the closed form).
pub fn validate_file_with(path: &Path, model: super::ReservedModel) -> Result<Validation> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate_text(&text, base, &path.display().to_string(), model)
}

pub fn validate_text(
    text: &str,
    base: &Path,
    name: &str,
    model: super::ReservedModel,
) -> Result<Validation> {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut workloads: std::collections::HashMap<String, crate::model::Workload> =
        Default::default();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::input(format!("{name}:{ln}: not a JSON object: {e}")))?;
        if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
            skipped.push(Skipped {
                line: ln,
                reason: format!(
                    "the run failed: {}",
                    err.chars().take(80).collect::<String>()
                ),
            });
            continue;
        }
        let Some(args) = v.get("estimate_args").and_then(|a| a.as_str()) else {
            skipped.push(Skipped {
                line: ln,
                reason: "no estimate_args".into(),
            });
            continue;
        };
        // a measured peak of 0 bytes is no measurement (relative errors would divide by it)
        let measured = |k: &str| v.get(k).and_then(|x| x.as_u64()).filter(|b| *b > 0);
        let (Some(ma), Some(mr)) = (measured("peak_alloc"), measured("peak_reserved")) else {
            skipped.push(Skipped {
                line: ln,
                reason: "no peak_alloc / peak_reserved above 0 bytes".into(),
            });
            continue;
        };
        let ra = RowArgs::try_parse_from(args.split_whitespace()).map_err(|e| {
            Error::input(format!(
                "{name}:{ln}: estimate_args: {}",
                e.to_string().lines().next().unwrap_or("invalid")
            ))
        })?;
        // every knob that `model::resolve` builds the workload from (shape, task, LoRA)
        let key = format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            ra.model,
            ra.knobs.seq_len,
            ra.knobs.image_size,
            ra.knobs.num_classes,
            ra.knobs.target_len,
            ra.knobs.task,
            ra.knobs.lora_rank,
            ra.knobs.lora_targets
        );
        let w = match workloads.get(&key) {
            Some(w) => w.clone(),
            None => {
                let w = crate::model::resolve(&ra.model, base, &ra.knobs)
                    .map_err(|e| Error::input(format!("{name}:{ln}: {e}")))?;
                workloads.insert(key, w.clone());
                w
            }
        };
        let k = w
            .resolve_knobs(&ra.knobs)
            .map_err(|e| Error::input(format!("{name}:{ln}: {e}")))?;
        let e = super::estimate_with(&w, &k, None, model)
            .map_err(|e| Error::input(format!("{name}:{ln}: {e}")))?;
        let label = row_label(&v, &w.name);
        rows.push(RowResult {
            line: ln,
            label,
            estimate_args: args.to_string(),
            measured_alloc: ma,
            measured_reserved: mr,
            estimated_alloc: e.peak_allocated_bytes,
            estimated_reserved: e.peak_reserved_bytes,
            error_alloc: rel(e.peak_allocated_bytes, ma),
            error_reserved: rel(e.peak_reserved_bytes, mr),
        });
    }
    let ea: Vec<f64> = rows.iter().map(|r| r.error_alloc).collect();
    let er: Vec<f64> = rows.iter().map(|r| r.error_reserved).collect();
    Ok(Validation {
        file: name.to_string(),
        alloc: stats(&ea),
        reserved: stats(&er),
        rows,
        skipped,
    })
}

fn rel(est: u64, meas: u64) -> f64 {
    (est as f64 - meas as f64) / (meas.max(1) as f64)
}

/// A short description of a row: workload, batch, precision, checkpointing, variant.
fn row_label(v: &serde_json::Value, fallback: &str) -> String {
    let s = |k: &str| {
        v.get(k).map(|x| match x {
            serde_json::Value::String(s) => s.clone(),
            o => o.to_string(),
        })
    };
    let mut parts = vec![s("workload").unwrap_or_else(|| fallback.to_string())];
    if let Some(b) = s("batch") {
        parts.push(format!("b{b}"));
    }
    if let Some(p) = s("prec") {
        parts.push(p);
    }
    if v.get("ckpt").and_then(|c| c.as_bool()) == Some(true) {
        parts.push("ckpt".into());
    }
    if let Some(o) = s("opt") {
        if o != "adamw" {
            parts.push(o);
        }
    }
    if let Some(a) = v.get("accum").and_then(|a| a.as_u64()) {
        if a > 1 {
            parts.push(format!("accum{a}"));
        }
    }
    if let Some(var) = v.get("variant").and_then(|x| x.as_object()) {
        let keys: Vec<&str> = var
            .iter()
            .filter(|(_, b)| b.as_bool() == Some(true))
            .map(|(k, _)| k.as_str())
            .collect();
        if !keys.is_empty() {
            parts.push(keys.join("+"));
        }
    }
    parts.join(" ")
}

crate::catalogue! {
    pub enum V {
        Title => ("Estimate vs measurement", "估算与实测对比"),
        Row => ("line", "行"),
        Config => ("configuration", "配置"),
        MeasAlloc => ("measured alloc", "实测已分配"),
        EstAlloc => ("estimated alloc", "估算已分配"),
        ErrAlloc => ("error", "误差"),
        MeasRes => ("measured reserved", "实测预留"),
        EstRes => ("estimated reserved", "估算预留"),
        ErrRes => ("error", "误差"),
        Summary => ("Summary (absolute relative error)", "汇总（相对误差绝对值）"),
        Quantity => ("quantity", "指标"),
        Median => ("median", "中位数"),
        P90 => ("p90", "p90"),
        Max => ("max", "最大"),
        Under => ("under-estimates beyond 5%", "低估超过 5% 的行数"),
        Alloc => ("peak allocated", "峰值已分配"),
        Reserved => ("peak reserved", "峰值已预留"),
        Skipped => ("Skipped rows", "跳过的行"),
        Rows => ("{} rows compared, {} skipped.", "比较了 {} 行，跳过 {} 行。"),
    }
}

pub fn document(v: &Validation, lang: crate::report::Lang) -> crate::report::Document {
    use crate::report::units::gib;
    let mut d = crate::report::Document::new();
    d.heading(1, format!("{}: {}", V::Title.text(lang), v.file));
    d.para(crate::report::fill(
        V::Rows.text(lang),
        &[&v.rows.len(), &v.skipped.len()],
    ));
    let sp = |e: f64| format!("{:+.1}%", e * 100.0);
    d.table(
        vec![
            V::Row.text(lang).into(),
            V::Config.text(lang).into(),
            V::MeasAlloc.text(lang).into(),
            V::EstAlloc.text(lang).into(),
            V::ErrAlloc.text(lang).into(),
            V::MeasRes.text(lang).into(),
            V::EstRes.text(lang).into(),
            V::ErrRes.text(lang).into(),
        ],
        v.rows
            .iter()
            .map(|r| {
                vec![
                    r.line.to_string(),
                    r.label.clone(),
                    gib(r.measured_alloc),
                    gib(r.estimated_alloc),
                    sp(r.error_alloc),
                    gib(r.measured_reserved),
                    gib(r.estimated_reserved),
                    sp(r.error_reserved),
                ]
            })
            .collect(),
    );
    d.heading(2, V::Summary.text(lang));
    let p = |x: f64| format!("{:.1}%", x * 100.0);
    d.table(
        vec![
            V::Quantity.text(lang).into(),
            V::Median.text(lang).into(),
            V::P90.text(lang).into(),
            V::Max.text(lang).into(),
            V::Under.text(lang).into(),
        ],
        [(V::Alloc, &v.alloc), (V::Reserved, &v.reserved)]
            .iter()
            .map(|(w, s)| {
                vec![
                    w.text(lang).into(),
                    p(s.median_abs),
                    p(s.p90_abs),
                    p(s.max_abs),
                    s.under_beyond_5pct.to_string(),
                ]
            })
            .collect(),
    );
    if !v.skipped.is_empty() {
        d.heading(2, V::Skipped.text(lang));
        d.bullets(
            v.skipped
                .iter()
                .map(|s| format!("{}: {}", s.line, s.reason))
                .collect(),
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_quantiles() {
        let s = stats(&[0.01, -0.02, 0.03, -0.10, 0.0]);
        assert!((s.median_abs - 0.02).abs() < 1e-12);
        assert!((s.max_abs - 0.10).abs() < 1e-12);
        assert_eq!(s.under_beyond_5pct, 1);
    }

    /// A row that measured 0 bytes is skipped: its relative error would divide by zero (a row of
    /// GPT-2 was reported 1,517,767,987,200% off).
    #[test]
    fn a_zero_measurement_is_skipped() {
        let text = concat!(
            r#"{"estimate_args": "--model preset:gpt2 --batch 1 --seq-len 64", "peak_alloc": 0, "peak_reserved": 0}"#,
            "\n",
            r#"{"estimate_args": "--model preset:gpt2 --batch 1 --seq-len 64", "peak_alloc": 1000000000, "peak_reserved": 1100000000}"#,
        );
        let v = validate_text(
            text,
            Path::new("."),
            "rows",
            crate::memory::ReservedModel::Replay,
        )
        .unwrap();
        assert_eq!(v.rows.len(), 1);
        assert_eq!(v.skipped.len(), 1);
        assert_eq!(v.skipped[0].line, 1);
    }
}
