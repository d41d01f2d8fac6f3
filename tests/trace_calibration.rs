//! The traced tier against the H100 calibration measurements, from the committed calibration
//! traces (made on the CPU by scripts/trace-calibration.py): the figures of docs/accuracy.md.
use std::path::Path;

use oomdoc::model::trace::accuracy::{self, Row, Source};

const CALIBRATION: &str = "tests/fixtures/trace/calibration/measurements-h100-torch2.11.jsonl";
const CALIBRATION_TRACES: &str = "tests/fixtures/trace/calibration";

/// The rows of the `measurements` file (JSON lines) estimated from the traces in `traces`.
fn rows(measurements: &str, traces: &str, source: Source) -> Vec<Row> {
    let text = std::fs::read_to_string(measurements).unwrap();
    accuracy::evaluate(&text, Path::new(traces), source).unwrap()
}

#[test]
fn calibration_traces_estimate_their_measured_rows() {
    let rows = rows(CALIBRATION, CALIBRATION_TRACES, Source::Own);
    let mut errs: Vec<f64> = rows.iter().filter_map(|r| r.reserved_error()).collect();
    assert_eq!(errs.len(), 46, "rows with a trace");
    let under: Vec<String> = rows
        .iter()
        .filter(|r| r.reserved_error().is_some_and(|e| e < -0.03))
        .map(|r| {
            format!(
                "{} b{}: {:+.1}%",
                r.name,
                r.batch,
                r.reserved_error().unwrap() * 100.0
            )
        })
        .collect();
    errs.iter_mut().for_each(|e| *e = e.abs());
    errs.sort_by(|a, b| a.total_cmp(b));
    let median = errs[errs.len() / 2];
    let max = errs[errs.len() - 1];
    // targets: median <= 3%, max <= 8%, no under-estimate beyond 3% (docs/accuracy.md). Measured:
    // median 0.6%, max 4.8%, five rows under by more than 3%, all of them with peak allocated
    // within 0.4%: NavDP-like bf16-mixed with checkpointing b16 -4.8%, b8 -3.8%, b12 -3.5%,
    // NavDP-like fp32 with checkpointing b16 -4.4%, ResNet-18 fp32 b128 -3.1%. How these rows
    // pack depends on the order of the driver's segment addresses (docs/accuracy.md, "Peak
    // reserved under other segment orders") and on what the process ran before ("Repeatability")
    assert!(median <= 0.03, "median {median}");
    assert!(max <= 0.08, "max {max}");
    assert!(under.len() <= 5, "{under:?}");
    // peak allocated, which the segment order does not change: within 1.1% on every row (the
    // replayed event stream matches the real one; it was +8.5% on NavDP-like bf16-mixed with
    // its ViTs checkpointed before probe 0.1.3)
    for r in &rows {
        let Some(ea) = r.allocated_error() else {
            continue;
        };
        assert!(
            ea.abs() <= 0.011,
            "{} b{} allocated {ea:+.4}",
            r.name,
            r.batch
        );
    }
}

/// The checkpointing transformation of traces taken without it: the block's output stays (the
/// next block keeps it as its checkpoint input; BERT-base was -6.2% allocated when the closing
/// LayerNorm's output was freed with the block's saved storages), also where autograd saved
/// none of it (bf16-mixed BERT-base, -6.9% allocated while the forward's free of it stood), and
/// what the fused attention rule keeps is freed with the saved storages (GPT-2 was +13%
/// allocated).
#[test]
fn checkpointing_transformation_keeps_block_outputs_only() {
    let rows = rows(CALIBRATION, CALIBRATION_TRACES, Source::Transformed);
    let mut checked = 0;
    for r in rows.iter().filter(|r| {
        r.transformed
            && [
                "bert_base_s512_fp32_ckpt",
                "bert_base_s512_amp_bf16_ckpt",
                "gpt2_124m_s1024_fp32_ckpt",
                "vit_b16_224_fp32_ckpt",
            ]
            .iter()
            .any(|n| r.name.starts_with(n))
    }) {
        let ea = r.allocated_error().unwrap();
        assert!(ea.abs() < 0.01, "{} allocated {ea:+.4}", r.name);
        checked += 1;
    }
    assert_eq!(checked, 4);
}

/// Architectures no rule was derived from, measured on an H200 (ConvNeXt-T: depthwise 7x7
/// convolutions; Swin-T: windowed attention; EfficientNet-B0: depthwise and squeeze-excitation),
/// traced on the CPU in their measured precision.
#[test]
fn held_out_traces_estimate_their_measured_rows() {
    let rows = rows(
        "tests/fixtures/trace/holdout/measurements-traced-only-h200-torch2.11.jsonl",
        "tests/fixtures/trace/holdout",
        Source::Own,
    );
    assert_eq!(rows.iter().filter(|r| r.estimate.is_some()).count(), 6);
    for r in &rows {
        let ea = r.allocated_error().unwrap();
        let er = r.reserved_error().unwrap();
        // peak allocated within 3% on all six; reserved between -6% (ConvNeXt-T fp32) and +15%
        // (EfficientNet-B0: the convolution-workspace rule over-charges its 1x1 convolutions)
        assert!(ea.abs() < 0.03, "{} allocated {ea:+.3}", r.name);
        assert!((-0.06..0.16).contains(&er), "{} reserved {er:+.3}", r.name);
    }
}

/// The held-out rows of the analytic tier (`tests/fixtures/calibration-holdout/`, measured on an
/// H200), traced on the CPU with `scripts/gpu-measure.py --parts trace --device cpu` in their
/// measured precision and checkpointing (the configurations whose trace is committed).
#[test]
fn held_out_rows_traced_on_the_cpu() {
    let rows = rows(
        "tests/fixtures/calibration-holdout/measurements-h200-torch2.11.jsonl",
        "tests/fixtures/calibration-holdout/cpu-traces",
        Source::Own,
    );
    let traced: Vec<&Row> = rows.iter().filter(|r| r.estimate.is_some()).collect();
    // all 19: ResNet-50, ViT-S/16, ViT-L/16, T5-small, upstream NavDP, the Llama-style decoder,
    // GPT-2 medium, BERT-large, Qwen2.5-0.5B with and without LoRA
    assert_eq!(traced.len(), 19, "rows with a trace");
    for r in traced {
        let ea = r.allocated_error().unwrap();
        let er = r.reserved_error().unwrap();
        // measured: reserved -2.1..+3.7% (Llama-style bf16-mixed), allocated within 4.3%
        // (ResNet-50 fp32 with checkpointing). T5-small's self-attention passes a learned
        // position bias as the SDPA mask, which keeps it on the math backend (-28% replayed with
        // the fused-kernel rule).
        assert!(
            ea.abs() < 0.05,
            "{} b{} allocated {ea:+.3}",
            r.name,
            r.batch
        );
        assert!(
            (-0.03..0.05).contains(&er),
            "{} b{} reserved {er:+.3}",
            r.name,
            r.batch
        );
    }
}

/// NavDP-like fp32 with its ViTs checkpointed, batch 16, against the H100 run of the same
/// configuration whose allocator history was recorded (`tests/fixtures/trace/history/
/// navdp_fp32_ckptvit_b16`; its peak reserved, 7,295,991,808 bytes, is in
/// `tests/fixtures/calibration/remeasured-h100/history_rows.jsonl`). The decoder's packed
/// key/value projection makes its input's and its weight's gradients in one order at batch 1
/// and in the other at batch 2; matched in order, each got the other's slope, and the replay of
/// the CPU trace was 4.4% under that run (now 0.9%).
#[test]
fn navdp_checkpointed_vits_replay_like_their_h100_history() {
    let rows = rows(CALIBRATION, CALIBRATION_TRACES, Source::Own);
    let row = rows
        .iter()
        .find(|r| r.name == "navdp_like_fp32_nockpt_adamw_ckpt_vit" && r.batch == 16)
        .unwrap();
    let (_, reserved) = row.estimate.unwrap();
    let real = 7_295_991_808.0;
    let err = (reserved as f64 - real) / real;
    assert!(
        err.abs() < 0.02,
        "peak reserved {err:+.4} against the history run"
    );
}

/// The same traces against the later H100 runs of six of these configurations whose allocator
/// histories were recorded (each run twice, recorded and not): docs/accuracy.md, "Repeatability
/// of the measurements". Measured: median 0.9%, max 4.5% (ResNet-18 fp32 b128, whose cuDNN
/// workspaces differ between runs), one row beyond 3%.
#[test]
fn calibration_traces_estimate_the_history_runs() {
    let rows = rows(
        "tests/fixtures/calibration/remeasured-h100/history_rows.jsonl",
        CALIBRATION_TRACES,
        Source::Own,
    );
    let mut errs: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.reserved_error())
        .map(f64::abs)
        .collect();
    assert_eq!(errs.len(), 12);
    errs.sort_by(|a, b| a.total_cmp(b));
    assert!(errs[6] <= 0.015, "median {}", errs[6]);
    assert!(errs[11] <= 0.05, "max {}", errs[11]);
    // five rows were 3.5-4.5% off before the gradients of the NavDP-like decoder were paired by
    // shape across the traced batch sizes
    assert!(errs.iter().filter(|e| **e > 0.03).count() <= 1, "{errs:?}");
}
