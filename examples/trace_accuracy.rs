//! Peak reserved memory from the calibration traces against the H100 measurements.
//!
//! `cargo run --release --example trace_accuracy -- MEASUREMENTS.jsonl TRACE_DIR`
//! (traces made by scripts/trace-calibration.py; named <workload>_<prec>_<ckpt|nockpt>_<opt>[_variant].trace.json.gz)
use std::path::Path;

use oomdoc::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};
use oomdoc::model::trace;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (rows, dir) = match (args.get(1), args.get(2)) {
        (Some(r), Some(d)) => (r.clone(), d.clone()),
        _ => anyhow::bail!("usage: trace_accuracy MEASUREMENTS.jsonl TRACE_DIR"),
    };
    let text = std::fs::read_to_string(&rows)?;
    let mut errs: Vec<f64> = Vec::new();
    println!("| configuration | batch | accum | measured peak reserved (GiB) | traced estimate (GiB) | error | peak allocated: measured / estimate (GiB) |");
    println!("|---|---|---|---|---|---|---|");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let r: serde_json::Value = serde_json::from_str(line)?;
        if r.get("capped").is_some() || r.get("error").is_some() {
            continue;
        }
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
        // fp16 autocast keeps the same bytes as bf16 autocast: its rows use the bf16 trace
        let file = Path::new(&dir).join(format!("{name}.trace.json.gz"));
        let file = if !file.exists() && prec == "amp_fp16" {
            Path::new(&dir).join(format!(
                "{}.trace.json.gz",
                name.replace("amp_fp16", "amp_bf16")
            ))
        } else {
            file
        };
        if !file.exists() {
            println!("| {name} | – | – | – | no trace | – | – |");
            continue;
        }
        let t = trace::load(&file)?;
        let batch = r["batch"].as_u64().unwrap_or(1);
        let accum = r.get("accum").and_then(|a| a.as_u64()).unwrap_or(1);
        let knobs = Knobs {
            batch,
            grad_accum: accum,
            precision: match prec {
                "amp_bf16" => Precision::Bf16Mixed,
                "amp_fp16" => Precision::Fp16Mixed,
                "bf16_pure" => Precision::Bf16True,
                _ => Precision::Fp32,
            },
            checkpointing: if ckpt || variant.iter().any(|v| v.starts_with("ckpt")) {
                Checkpointing::Full
            } else {
                Checkpointing::None
            },
            checkpoint_modules: vec![],
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
        let est = trace::estimate(&t, &knobs)?;
        let meas = r["peak_reserved"].as_u64().unwrap_or(0) as f64;
        let err = (est.peak_reserved_bytes as f64 - meas) / meas;
        errs.push(err);
        let gib = |x: f64| x / (1u64 << 30) as f64;
        println!(
            "| {name} | {batch} | {accum} | {:.2} | {:.2} | {:+.1}% | {:.2} / {:.2} |",
            gib(meas),
            gib(est.peak_reserved_bytes as f64),
            err * 100.0,
            gib(r["peak_alloc"].as_u64().unwrap_or(0) as f64),
            gib(est.peak_allocated_bytes as f64),
        );
    }
    let mut abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
    abs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if !abs.is_empty() {
        let median = if abs.len() % 2 == 1 {
            abs[abs.len() / 2]
        } else {
            (abs[abs.len() / 2 - 1] + abs[abs.len() / 2]) / 2.0
        };
        let under = errs.iter().filter(|e| **e < -0.03).count();
        println!();
        println!(
            "rows: {}; |error| median {:.1}%, max {:.1}%; under-estimates beyond 3%: {}",
            abs.len(),
            median * 100.0,
            abs[abs.len() - 1] * 100.0,
            under
        );
    }
    Ok(())
}
