//! The plan picks measured on an H200 (`tests/fixtures/plancheck/`), estimated again with the
//! current model: a third set of measured configurations beside the calibration and held-out
//! files (small batches with gradient accumulation, tf32, bf16-true, selective checkpointing).
use std::process::Command;

use oomdoc::knobs::{Attention, KnobArgs, KnobDefaults};
use oomdoc::model::trace;
use serde_json::Value;

const DIR: &str = "tests/fixtures/plancheck";

/// The measured picks: (plan case, measured row).
fn picks() -> Vec<(Value, Value)> {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/plan-cases.json")).unwrap())
            .unwrap();
    let rows = std::fs::read_to_string(format!("{DIR}/plancheck-h200.jsonl")).unwrap();
    rows.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let r: Value = serde_json::from_str(line).unwrap();
            let case = cases.iter().find(|c| c["name"] == r["name"]).unwrap();
            (case.clone(), r)
        })
        .collect()
}

/// Relative errors (allocated, reserved) of an estimate against a measured row.
fn errors(r: &Value, alloc: f64, reserved: f64) -> (f64, f64) {
    (
        alloc / r["peak_alloc"].as_f64().unwrap() - 1.0,
        reserved / r["peak_reserved"].as_f64().unwrap() - 1.0,
    )
}

/// `oomdoc estimate` of one measured pick: its model arguments (without the plan's own batch)
/// and knobs, on the pick's GPU. Returns (peak allocated, peak reserved) bytes.
fn estimate(case: &Value, knobs: &Value) -> (f64, f64) {
    let mut args: Vec<String> = vec!["estimate".into()];
    let model: Vec<String> = case["model_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut i = 0;
    while i < model.len() {
        if model[i] == "--batch" {
            i += 2;
            continue;
        }
        args.push(model[i].clone());
        i += 1;
    }
    for (flag, key) in [
        ("--batch", "batch"),
        ("--grad-accum", "grad_accum"),
        ("--precision", "precision"),
        ("--checkpointing", "checkpointing"),
        ("--attention", "attention"),
        ("--optimizer", "optimizer"),
    ] {
        args.push(flag.into());
        args.push(match &knobs[key] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        });
    }
    if let Some(m) = knobs["checkpoint_modules"].as_array() {
        let m: Vec<&str> = m.iter().map(|v| v.as_str().unwrap()).collect();
        args.push("--checkpoint-modules".into());
        args.push(m.join(","));
    }
    args.extend(["--gpu".into(), case["gpu"].as_str().unwrap().into()]);
    args.extend(["--format".into(), "json".into()]);
    let out = Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .args(&args)
        .output()
        .expect("run oomdoc");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        e["peak_allocated_bytes"].as_f64().unwrap(),
        e["peak_reserved_bytes"].as_f64().unwrap(),
    )
}

/// None of the nine picks is under-estimated by more than 5% (a pick the plan calls safe that
/// would not fit). Ties of equal free blocks broken by descending segment address in the
/// analytic replay put GPT-2 at batch 2 x 4 with checkpointing at -11.1% here.
#[test]
fn measured_plan_picks_are_not_under_estimated() {
    let mut n = 0;
    for (case, r) in picks() {
        let (alloc, reserved) = estimate(&case, &r["knobs"]);
        let (ea, er) = errors(&r, alloc, reserved);
        assert!(ea.abs() < 0.05, "{}: peak allocated {ea:+.3}", r["name"]);
        assert!(
            er > -0.05 && er < 0.10,
            "{}: peak reserved {er:+.3}",
            r["name"]
        );
        n += 1;
    }
    assert_eq!(n, 9);
}

/// The traced tier on the seven picks whose precision and checkpointing a calibration trace has
/// (tf32 memory is fp32's; the optimizer and batch come from the knobs): docs/accuracy.md.
#[test]
fn traced_tier_on_the_measured_plan_picks() {
    let traces = [
        ("navdp_conservative", "navdp_like_fp32_ckpt_adamw"),
        ("gpt2_max_saving", "gpt2_124m_s1024_fp32_ckpt_adamw"),
        ("gpt2_balanced", "gpt2_124m_s1024_bf16_pure_nockpt_adamw"),
        ("gpt2_conservative", "gpt2_124m_s1024_fp32_nockpt_adamw"),
        ("vit_b16_max_saving", "vit_b16_224_amp_bf16_ckpt_adamw"),
        ("vit_b16_balanced", "vit_b16_224_amp_bf16_ckpt_adamw"),
        ("vit_b16_conservative", "vit_b16_224_fp32_nockpt_adamw"),
    ];
    let mut n = 0;
    for (_, r) in picks() {
        let Some((_, file)) = traces.iter().find(|(p, _)| r["name"] == *p) else {
            continue;
        };
        let t = trace::load(std::path::Path::new(&format!(
            "tests/fixtures/trace/calibration/{file}.trace.json.gz"
        )))
        .unwrap();
        // the plan's knobs as a measurement row states them (`KnobArgs` reads them by serde)
        let mut k = serde_json::to_value(KnobArgs::default()).unwrap();
        for (key, v) in r["knobs"].as_object().unwrap() {
            if k.get(key).is_some() {
                k[key] = v.clone();
            }
        }
        let args: KnobArgs = serde_json::from_value(k).unwrap();
        let defaults = KnobDefaults {
            batch: 1,
            attention: Attention::Sdpa,
        };
        let knobs = args.resolve(&defaults).unwrap();
        let e = trace::estimate(&t, &knobs).unwrap();
        let (ea, er) = errors(
            &r,
            e.peak_allocated_bytes as f64,
            e.peak_reserved_bytes as f64,
        );
        // measured: allocated -1.9..+0.1%, reserved -5.2..+0.5%; ViT-B/16 bf16-mixed
        // checkpointed is under at batch 128 (-5.2%) and 32 x 4 (-3.4%)
        assert!(ea.abs() < 0.025, "{}: peak allocated {ea:+.3}", r["name"]);
        assert!(
            er > -0.06 && er < 0.03,
            "{}: peak reserved {er:+.3}",
            r["name"]
        );
        n += 1;
    }
    assert_eq!(n, 7);
}
