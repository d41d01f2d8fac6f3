//! Peak reserved memory from the calibration traces against the H100 measurements.
//!
//! `cargo run --release --example trace_accuracy -- MEASUREMENTS.jsonl TRACE_DIR [--transform]`
//! (`--transform`: rows without a trace of their own use the fp32 trace without checkpointing,
//! transformed by the estimate's precision and checkpointing rules; reported separately)
//! (traces made by scripts/trace-calibration.py; named <workload>_<prec>_<ckpt|nockpt>_<opt>[_variant].trace.json.gz)
use std::path::Path;

use oomdoc::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};
use oomdoc::model::trace;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let transform = args.iter().any(|a| a == "--transform");
    let (rows, dir) = match (args.get(1), args.get(2)) {
        (Some(r), Some(d)) => (r.clone(), d.clone()),
        _ => anyhow::bail!("usage: trace_accuracy MEASUREMENTS.jsonl TRACE_DIR"),
    };
    let text = std::fs::read_to_string(&rows)?;
    let mut errs: Vec<f64> = Vec::new();
    let mut terrs: Vec<f64> = Vec::new();
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
        // fp16 autocast keeps the same bytes as bf16 autocast: its rows use the bf16 trace.
        // Without a trace in the row's own precision / checkpointing, the fp32 trace without
        // checkpointing is transformed (the estimate's precision and checkpointing rules).
        let path = |n: &str| Path::new(&dir).join(format!("{n}.trace.json.gz"));
        let plain = format!("{wl}_fp32_nockpt_{opt}");
        let same_prec = format!("{wl}_{}_nockpt_{opt}", prec.replace("amp_fp16", "amp_bf16"));
        let mut transformed = false;
        let file = if path(&name).exists() {
            path(&name)
        } else if prec == "amp_fp16" && path(&name.replace("amp_fp16", "amp_bf16")).exists() {
            path(&name.replace("amp_fp16", "amp_bf16"))
        } else if variant.iter().any(|v| v == "sdpa") {
            // the model's own attention code differs (explicit softmax vs SDPA): no rule turns one
            // trace into the other
            println!("| {name} | – | – | – | no trace | – | – |");
            continue;
        } else if transform && path(&same_prec).exists() {
            transformed = true;
            path(&same_prec)
        } else if transform && path(&plain).exists() && prec != "bf16_pure" {
            transformed = true;
            path(&plain)
        } else {
            println!("| {name} | – | – | – | no trace | – | – |");
            continue;
        };
        let t = trace::load(&file)?;
        let batch = r["batch"].as_u64().unwrap_or(1);
        let accum = r.get("accum").and_then(|a| a.as_u64()).unwrap_or(1);
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
        let est = trace::estimate(&t, &knobs)?;
        let meas = r["peak_reserved"].as_u64().unwrap_or(0) as f64;
        let err = (est.peak_reserved_bytes as f64 - meas) / meas;
        if transformed {
            terrs.push(err);
        } else {
            errs.push(err);
        }
        let gib = |x: f64| x / (1u64 << 30) as f64;
        println!(
            "| {name}{} | {batch} | {accum} | {:.2} | {:.2} | {:+.1}% | {:.2} / {:.2} |",
            if transformed { " (transformed)" } else { "" },
            gib(meas),
            gib(est.peak_reserved_bytes as f64),
            err * 100.0,
            gib(r["peak_alloc"].as_u64().unwrap_or(0) as f64),
            gib(est.peak_allocated_bytes as f64),
        );
    }
    summary("traced in the measured precision and checkpointing", &errs);
    if transform {
        summary(
            "transformed (from the trace without checkpointing, in the row's precision if traced, else fp32)",
            &terrs,
        );
    }
    Ok(())
}

fn summary(what: &str, errs: &[f64]) {
    let mut abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
    abs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if abs.is_empty() {
        return;
    }
    let median = if abs.len() % 2 == 1 {
        abs[abs.len() / 2]
    } else {
        (abs[abs.len() / 2 - 1] + abs[abs.len() / 2]) / 2.0
    };
    let under = errs.iter().filter(|e| **e < -0.03).count();
    println!();
    println!(
        "{what}: rows {}; |error| median {:.1}%, max {:.1}%; under-estimates beyond 3%: {}",
        abs.len(),
        median * 100.0,
        abs[abs.len() - 1] * 100.0,
        under
    );
}
