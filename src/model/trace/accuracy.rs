//! The traced tier against measured rows: each row of a measurement file (the calibration
//! harness's fields) is estimated from the trace of its own configuration in a directory of traces
//! made by `scripts/trace-calibration.py` (`<workload>_<prec>_<ckpt|nockpt>_<opt>[_variant]`), or
//! (see [`Source`]) from the trace without checkpointing through the estimate's precision and
//! checkpointing rules. Used by `examples/trace_accuracy.rs` (docs/accuracy.md) and the tests.
use std::path::Path;

use crate::error::{Error, Result};
use crate::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};

/// One measured row and its traced estimate (`estimate` is `None` without a usable trace).
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub batch: u64,
    pub accum: u64,
    /// Estimated through the precision / checkpointing rules from another trace.
    pub transformed: bool,
    pub measured_alloc: u64,
    pub measured_reserved: u64,
    /// (peak allocated, peak reserved)
    pub estimate: Option<(u64, u64)>,
}

impl Row {
    /// Relative error of the peak allocated estimate.
    pub fn allocated_error(&self) -> Option<f64> {
        let m = self.measured_alloc.max(1) as f64;
        self.estimate.map(|(a, _)| (a as f64 - m) / m)
    }

    /// Relative error of the peak reserved estimate.
    pub fn reserved_error(&self) -> Option<f64> {
        let m = self.measured_reserved.max(1) as f64;
        self.estimate.map(|(_, r)| (r as f64 - m) / m)
    }
}

/// Which trace a row is estimated from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The trace of the row's own configuration only.
    Own,
    /// Its own trace, else the trace without checkpointing through the estimate's rules.
    OwnElseTransformed,
    /// Always through the rules from the trace without checkpointing (rows that need no
    /// transformation get no estimate): how well the rules stand in for a trace.
    Transformed,
}

/// Every row of `measurements` (JSON lines) against the traces in `dir`.
pub fn evaluate(measurements: &str, dir: &Path, source: Source) -> Result<Vec<Row>> {
    evaluate_with(
        measurements,
        dir,
        source,
        &super::EstimateOptions::default(),
    )
}

/// `evaluate` with other replay options (e.g. another segment address order).
pub fn evaluate_with(
    measurements: &str,
    dir: &Path,
    source: Source,
    opts: &super::EstimateOptions,
) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for (ln, line) in measurements.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::input(format!("line {}: {e}", ln + 1)))?;
        if r.get("capped").is_some() || r.get("error").is_some() {
            continue;
        }
        let batch = r["batch"].as_u64().unwrap_or(1);
        let accum = r.get("accum").and_then(|a| a.as_u64()).unwrap_or(1);
        let row = |name: String, estimate: Option<(u64, u64)>| Row {
            name,
            batch,
            accum,
            transformed: false,
            measured_alloc: r["peak_alloc"].as_u64().unwrap_or(0),
            measured_reserved: r["peak_reserved"].as_u64().unwrap_or(0),
            estimate,
        };
        let wl = r["workload"].as_str().unwrap_or("");
        let prec = r["prec"].as_str().unwrap_or("");
        let ckpt = r["ckpt"].as_bool().unwrap_or(false);
        let opt = r["opt"].as_str().unwrap_or("adamw");
        let mut name = format!("{wl}_{prec}_{}_{opt}", if ckpt { "ckpt" } else { "nockpt" });
        let mut variant: Vec<String> = r
            .get("variant")
            .and_then(|v| v.as_object())
            .map(|m| {
                m.iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        variant.sort();
        for v in &variant {
            name.push('_');
            name.push_str(v);
        }
        // fp16 autocast keeps the same bytes as bf16 autocast: its rows use the bf16 trace.
        // Without a trace in the row's own precision / checkpointing, the fp32 trace without
        // checkpointing is transformed (the estimate's precision and checkpointing rules).
        let path = |n: &str| dir.join(format!("{n}.trace.json.gz"));
        let plain = format!("{wl}_fp32_nockpt_{opt}");
        let same_prec = format!("{wl}_{}_nockpt_{opt}", prec.replace("amp_fp16", "amp_bf16"));
        let own = if path(&name).exists() {
            Some(path(&name))
        } else if prec == "amp_fp16" && path(&name.replace("amp_fp16", "amp_bf16")).exists() {
            Some(path(&name.replace("amp_fp16", "amp_bf16")))
        } else {
            None
        };
        // the model's own attention code differs (explicit softmax vs SDPA) between the sdpa
        // variant and the others: no rule turns one trace into the other
        let rules_apply = !variant.iter().any(|v| v == "sdpa");
        let rule_base = [
            (same_prec.as_str(), true),
            (plain.as_str(), prec != "bf16_pure"),
        ]
        .into_iter()
        .filter(|(n, ok)| *ok && rules_apply && path(n).exists())
        .map(|(n, _)| path(n))
        .find(|p| Some(p) != own.as_ref());
        let (file, transformed) = match (source, own, rule_base) {
            (Source::Own | Source::OwnElseTransformed, Some(own), _) => (own, false),
            (Source::OwnElseTransformed | Source::Transformed, _, Some(base)) => (base, true),
            _ => {
                out.push(row(name, None));
                continue;
            }
        };
        let t = super::load(&file)?;

        let eargs: Vec<&str> = r["estimate_args"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let modules: Vec<String> = eargs
            .iter()
            .position(|a| *a == "--checkpoint-modules")
            .and_then(|i| eargs.get(i + 1))
            .map(|m| m.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let knobs = Knobs {
            batch,
            grad_accum: accum,
            precision: match prec {
                "amp_bf16" => Precision::Bf16Mixed,
                "amp_fp16" => Precision::Fp16Mixed,
                "bf16_pure" => Precision::Bf16True,
                _ => Precision::Fp32,
            },
            checkpointing: if ckpt {
                Checkpointing::Full
            } else if !modules.is_empty() {
                Checkpointing::Selective
            } else {
                Checkpointing::None
            },
            checkpoint_modules: modules,
            attention: Attention::Sdpa,
            optimizer: match opt {
                "sgd" => Optimizer::SgdMomentum,
                "adamw_fused" => Optimizer::AdamwFused,
                _ => Optimizer::Adamw,
            },
            gpus: 1,
            sharding: Sharding::None,
            lora_rank: None,
            lora_targets: vec![],
        };
        let est = super::estimate_with(&t, &knobs, opts)?;
        let mut x = row(
            name,
            Some((est.peak_allocated_bytes, est.peak_reserved_bytes)),
        );
        x.transformed = transformed;
        out.push(x);
    }
    Ok(out)
}
