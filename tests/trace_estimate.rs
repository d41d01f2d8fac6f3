//! The traced tier on a recorded trace fixture (tests/fixtures/trace/tiny_transformer.trace.json,
//! made by make_tiny_trace.py beside it), and its bad-input behaviour.
use std::path::{Path, PathBuf};
use std::process::Command;

use oomdoc::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};
use oomdoc::memory::allocator::AllocatorConfig;
use oomdoc::model::trace::{self, EstimateOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/trace")
        .join(name)
}

fn knobs(batch: u64) -> Knobs {
    Knobs {
        batch,
        grad_accum: 1,
        precision: Precision::Fp32,
        checkpointing: Checkpointing::None,
        checkpoint_modules: vec![],
        attention: Attention::Sdpa,
        optimizer: Optimizer::Adamw,
        gpus: 1,
        sharding: Sharding::None,
        lora_rank: None,
        lora_targets: vec![],
    }
}

fn oomdoc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn loads_the_probe_trace() {
    let t = trace::load(&fixture("tiny_transformer.trace.json")).unwrap();
    assert_eq!(t.version, 1);
    assert_eq!(t.runs.len(), 3);
    assert_eq!(t.first_run().unwrap().batch, 1);
    let steady: Vec<u64> = t.steady_runs().iter().map(|r| r.batch).collect();
    assert_eq!(steady, vec![1, 2]);
    assert!(t.runs.iter().all(|r| r.regions.len() == 2));
    // the first step creates the optimizer state; the steady ones find it alive
    assert!(t.runs[1].persistent.iter().any(|p| p.kind == "opt_state"));
    assert!(!t.runs[0].persistent.iter().any(|p| p.kind == "opt_state"));
}

#[test]
fn estimate_grows_with_batch_and_accumulation() {
    let t = trace::load(&fixture("tiny_transformer.trace.json")).unwrap();
    let e1 = trace::estimate(&t, &knobs(1)).unwrap();
    let e64 = trace::estimate(&t, &knobs(64)).unwrap();
    let e256 = trace::estimate(&t, &knobs(256)).unwrap();
    assert!(e1.peak_allocated_bytes > 0);
    assert!(e64.peak_allocated_bytes > e1.peak_allocated_bytes);
    assert!(e256.peak_allocated_bytes > e64.peak_allocated_bytes);
    assert!(e256.peak_reserved_bytes >= e256.peak_allocated_bytes);
    assert_eq!(
        e256.peak_device_bytes,
        e256.peak_reserved_bytes + e256.outside_pytorch_bytes
    );
    // the components add up to the allocated peak
    let sum: u64 = e256.components.iter().map(|c| c.bytes).sum();
    assert_eq!(sum, e256.peak_allocated_bytes);
    // cuBLAS workspaces are part of every estimate
    let ws = e1
        .components
        .iter()
        .find(|c| c.name == "workspaces")
        .unwrap();
    assert!(ws.bytes >= trace::CUBLAS_WORKSPACE_BYTES.iter().sum::<u64>());
    let mut k = knobs(64);
    k.grad_accum = 4;
    let acc = trace::estimate(&t, &k).unwrap();
    assert!(acc.peak_allocated_bytes >= e64.peak_allocated_bytes);
    assert!(acc.peak_allocated_bytes < e256.peak_allocated_bytes);
}

#[test]
fn fused_attention_rule_keeps_less_than_the_cpu_math_path() {
    let t = trace::load(&fixture("tiny_transformer.trace.json")).unwrap();
    let sdpa = trace::estimate(&t, &knobs(512)).unwrap();
    let mut k = knobs(512);
    k.attention = Attention::Eager;
    let eager = trace::estimate(&t, &k).unwrap();
    assert!(sdpa.peak_allocated_bytes < eager.peak_allocated_bytes);
    assert!(sdpa
        .transformed
        .iter()
        .any(|n| n.contains("scaled_dot_product_attention")));
}

/// A mask that requires grad (a learned position bias) keeps the math path on CUDA too: such
/// calls are replayed as traced, as with `--attention eager`.
#[test]
fn attention_with_a_learned_mask_keeps_the_math_path() {
    let mut t = trace::load(&fixture("tiny_transformer.trace.json")).unwrap();
    for run in &mut t.runs {
        for r in &mut run.regions {
            r.mask_requires_grad = true;
        }
    }
    let learned = trace::estimate(&t, &knobs(512)).unwrap();
    let mut k = knobs(512);
    k.attention = Attention::Eager;
    let eager = trace::estimate(&t, &k).unwrap();
    assert_eq!(learned.peak_allocated_bytes, eager.peak_allocated_bytes);
    assert!(learned
        .notes
        .iter()
        .any(|n| n.contains("mask requires grad")));
}

#[test]
fn precision_transformation_is_reported() {
    let t = trace::load(&fixture("tiny_transformer.trace.json")).unwrap();
    let fp32 = trace::estimate(&t, &knobs(256)).unwrap();
    let mut k = knobs(256);
    k.precision = Precision::Bf16True;
    let half = trace::estimate(&t, &k).unwrap();
    assert!(half.peak_allocated_bytes < fp32.peak_allocated_bytes);
    assert!(half.transformed.iter().any(|n| n.contains("bf16-true")));
    k.precision = Precision::Bf16Mixed;
    let mixed = trace::estimate(&t, &k).unwrap();
    assert!(mixed.transformed.iter().any(|n| n.contains("bf16-mixed")));
    k.precision = Precision::Fp32;
    k.checkpointing = Checkpointing::Full;
    let ck = trace::estimate(&t, &k).unwrap();
    assert!(ck
        .transformed
        .iter()
        .any(|n| n.contains("--checkpointing full")));
    // the two encoder blocks (blocks.0, blocks.1) no longer keep their activations
    assert!(ck.peak_allocated_bytes < fp32.peak_allocated_bytes);
    k.checkpointing = Checkpointing::Selective;
    k.checkpoint_modules = vec!["blocks".into()];
    let sel = trace::estimate(&t, &k).unwrap();
    assert_eq!(sel.peak_allocated_bytes, ck.peak_allocated_bytes);
}

/// A trace of a model already cast to bf16 (`model.to(torch.bfloat16)`): its float32 storages
/// (the loss computed in fp32) are real and are not halved for `--precision bf16-true`.
#[test]
fn a_bf16_trace_is_not_halved_again() {
    let mut t = trace::load(&fixture("tiny_transformer.trace.json")).unwrap();
    let mut k = knobs(256);
    k.precision = Precision::Bf16True;
    let halved = trace::estimate(&t, &k).unwrap();
    assert!(halved.transformed.iter().any(|n| n.contains("bf16-true")));
    let bf16 = t
        .strings
        .iter()
        .position(|s| s == "bfloat16")
        .unwrap_or_else(|| {
            t.strings.push("bfloat16".into());
            t.strings.len() - 1
        }) as u32;
    for run in &mut t.runs {
        for p in run.persistent.iter_mut().filter(|p| p.kind == "param") {
            p.dtype = bf16;
        }
    }
    let own = trace::estimate(&t, &k).unwrap();
    assert!(own.transformed.iter().all(|n| !n.contains("bf16-true")));
    // the activations keep their traced (float32) size
    assert!(own.peak_allocated_bytes > halved.peak_allocated_bytes);
    k.precision = Precision::Fp32;
    let fp32 = trace::estimate(&t, &k).unwrap();
    assert!(fp32.notes.iter().any(|n| n.contains("already 16-bit")));
}

#[test]
fn capacity_gives_the_oom_point() {
    let t = trace::load(&fixture("tiny_transformer.trace.json")).unwrap();
    let big = trace::estimate(&t, &knobs(256)).unwrap();
    let opts = EstimateOptions {
        allocator: AllocatorConfig {
            capacity: Some(big.peak_reserved_bytes / 2),
            ..AllocatorConfig::default()
        },
        ..EstimateOptions::default()
    };
    let e = trace::estimate_with(&t, &knobs(256), &opts).unwrap();
    let oom = e.oom.expect("half the reserved memory must not fit");
    assert!(oom.reserved_bytes <= big.peak_reserved_bytes / 2);
    assert!(!oom.op.is_empty());
    let fits = EstimateOptions {
        allocator: AllocatorConfig {
            capacity: Some(big.peak_reserved_bytes),
            ..AllocatorConfig::default()
        },
        ..EstimateOptions::default()
    };
    assert!(trace::estimate_with(&t, &knobs(256), &fits)
        .unwrap()
        .oom
        .is_none());
}

#[test]
fn probe_check_summarises_a_trace() {
    let f = fixture("tiny_transformer.trace.json");
    let (code, out, _) = oomdoc(&["probe", "--check", f.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_traces_give_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("tiny_transformer.trace.json")).unwrap();
    let cases = [
        (
            "truncated.json",
            text[..text.len() / 2].to_string(),
            "truncated",
        ),
        (
            "corrupt.json",
            text.replacen("\"runs\":[", "\"runs\":[}", 1),
            "not valid JSON",
        ),
        (
            "newer.json",
            text.replacen("\"version\":1", "\"version\":99", 1),
            "newer",
        ),
        (
            "other.json",
            "{\"format\":\"something\"}".to_string(),
            "not an oomdoc trace",
        ),
        (
            "badevent.json",
            text.replacen("[\"a\",", "[\"q\",", 1),
            "is not an event",
        ),
    ];
    for (name, body, needle) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        let (code, out, err) = oomdoc(&["probe", "--check", p.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(out.is_empty(), "{name}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
        assert!(
            err.contains(name),
            "{name}: the error names the file: {err}"
        );
    }
    let (code, _, err) = oomdoc(&["probe", "--check", "/nonexistent/x.trace.json"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/x.trace.json"));
}

#[test]
fn probe_path_points_at_the_package() {
    let (code, out, _) = oomdoc(&["probe", "--path"]);
    assert_eq!(code, 0);
    let p = PathBuf::from(out.trim());
    assert!(p.is_absolute());
    assert!(p.join("oomdoc_probe/__init__.py").is_file());
}

#[test]
fn probe_path_works_without_the_source_tree() {
    // an installed binary far from the sources: the embedded copy is written to the cache
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("bin/oomdoc");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_oomdoc"), &exe).unwrap();
    let out = Command::new(&exe)
        .args(["probe", "--path"])
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env_remove("OOMDOC_PROBE_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(p.join("oomdoc_probe/_recorder.py").is_file());
    assert!(p.join("pyproject.toml").is_file());
}

#[test]
fn probe_to_estimate_end_to_end_when_torch_is_there() {
    // .ci/run sets OOMDOC_PYTHON to a Python with torch; without it this test has nothing to run.
    let Ok(python) = std::env::var("OOMDOC_PYTHON") else {
        eprintln!("skipped: OOMDOC_PYTHON is not set (no Python with torch)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.trace.json");
    let status = Command::new(python)
        .arg(fixture("make_tiny_trace.py"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let t = trace::load(&out).unwrap();
    let e = trace::estimate(&t, &knobs(32)).unwrap();
    assert!(e.peak_reserved_bytes >= e.peak_allocated_bytes);
    assert!(e.peak_allocated_bytes > 0);
}

/// One run of a hand-made trace: the parameter (id 1, 1024 fp32, string 4) alive throughout.
fn hand_made_run(
    name: &str,
    batch: u64,
    events: Vec<serde_json::Value>,
    saved: &[u64],
    alive_after: &[u64],
    regions: Vec<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "name": name, "batch": batch,
        "persistent": [[1, 4096, 0, [1024], "param", 4]],
        "events": events, "saved": saved, "categories": {}, "alive_after": alive_after,
        "regions": regions, "untraced": []
    })
}

/// A hand-made trace of a first step at batch 1 and steady steps at 1 and 2 (`run(name, b)`).
fn hand_made_trace(strings: &[&str], run: impl Fn(&str, u64) -> serde_json::Value) -> trace::Trace {
    let text = serde_json::json!({
        "format": "oomdoc-trace", "version": 1, "producer": "test", "torch": "2.11",
        "python": "3.11", "device": "cpu", "autocast": [], "optimizers": [],
        "foreach_forced": false, "strings": strings,
        "runs": [run("first", 1), run("steady", 1), run("steady", 2)]
    })
    .to_string();
    trace::parse(&text).unwrap()
}

/// A hand-made trace: per batch b, a saved activation, at b > 1 a saved copy (a reshape that is a
/// view at batch 1 copies at every larger batch), and a gradient in backward.
fn two_batch_trace(region: Option<serde_json::Value>) -> trace::Trace {
    const MIB: u64 = 1 << 20;
    let run = |name: &str, b: u64| {
        let mut ev = vec![serde_json::json!([
            "a",
            10,
            MIB * b,
            0,
            [b, 256, 1024],
            1,
            3,
            "f",
            -1
        ])];
        let mut saved = vec![10];
        if b > 1 {
            ev.push(serde_json::json!([
                "a",
                11,
                MIB * b,
                0,
                [b, 256, 1024],
                2,
                3,
                "f",
                -1
            ]));
            saved.push(11);
        }
        ev.push(serde_json::json!([
            "a",
            20,
            MIB * b,
            0,
            [b, 256, 1024],
            1,
            0,
            "b",
            -1
        ]));
        ev.push(serde_json::json!(["f", 10, "b", -1]));
        if b > 1 {
            ev.push(serde_json::json!(["f", 11, "b", -1]));
        }
        ev.push(serde_json::json!(["f", 20, "b", -1]));
        hand_made_run(name, b, ev, &saved, &[1], region.iter().cloned().collect())
    };
    hand_made_trace(
        &[
            "float32",
            "aten.mm.default",
            "aten.clone.default",
            "layer",
            "w",
        ],
        run,
    )
}

/// The allocations only the larger traced batch has are scaled with the batch, not dropped.
#[test]
fn allocations_seen_only_at_the_larger_traced_batch_are_scaled() {
    const MIB: u64 = 1 << 20;
    let t = two_batch_trace(None);
    let e8 = trace::estimate(&t, &knobs(8)).unwrap();
    let e16 = trace::estimate(&t, &knobs(16)).unwrap();
    // three batch-sized tensors are alive together in backward: 8 more samples add 3 x 8 MiB
    assert_eq!(
        e16.peak_allocated_bytes - e8.peak_allocated_bytes,
        3 * 8 * MIB
    );
}

/// A storage seen only at the larger traced batch grows with the batch, unless it has a
/// parameter's shape: a gradient or a copy of a parameter (an autocast weight cast's gradient,
/// say) stays the same size whatever the batch.
#[test]
fn unmatched_parameter_shaped_storages_do_not_grow_with_the_batch() {
    use oomdoc::model::trace::{Event, Phase};
    const MIB: u64 = 1 << 20;
    let mut t = two_batch_trace(None);
    let hi = t.runs.last_mut().unwrap();
    // in backward, while the three batch-sized tensors are alive: a 64 MiB storage shaped like
    // the parameter (shape [1024]), only in the larger run
    let at = hi
        .events
        .iter()
        .position(|e| matches!(e, Event::Free { .. }))
        .unwrap();
    hi.events.insert(
        at,
        Event::Alloc {
            id: 30,
            bytes: 64 * MIB,
            dtype: 0,
            shape: vec![1024],
            op: 1,
            module: 0,
            phase: Phase::Backward,
            region: None,
        },
    );
    hi.events.push(Event::Free {
        id: 30,
        phase: Phase::Backward,
        region: None,
    });
    let e8 = trace::estimate(&t, &knobs(8)).unwrap();
    let e16 = trace::estimate(&t, &knobs(16)).unwrap();
    assert_eq!(
        e16.peak_allocated_bytes - e8.peak_allocated_bytes,
        3 * 8 * MIB
    );
}

/// A trace from a probe that did not record attention-region inputs replays the smaller batch
/// (as before) and says so.
#[test]
fn traces_without_region_inputs_replay_the_smaller_batch_and_say_so() {
    const MIB: u64 = 1 << 20;
    let region = serde_json::json!({
        "id": 0, "kind": "sdpa", "q": [1, 4, 16, 8], "k": [1, 4, 16, 8], "v": [1, 4, 16, 8],
        "dtype": "float32", "requires_grad": true, "outputs": []
    });
    let t = two_batch_trace(Some(region));
    let e8 = trace::estimate(&t, &knobs(8)).unwrap();
    let e16 = trace::estimate(&t, &knobs(16)).unwrap();
    assert_eq!(
        e16.peak_allocated_bytes - e8.peak_allocated_bytes,
        2 * 8 * MIB
    );
    assert!(
        e16.notes.iter().any(|n| n.contains("older probe")),
        "{:?}",
        e16.notes
    );
}

/// A hand-made step of one attention block under non-reentrant activation checkpointing, at
/// batch b (every storage b MiB): the forward call's q/k/v storage (10), output (11) and CPU
/// log-sum-exp (12) are all freed in forward, nothing is saved; in backward the block is
/// recomputed (20-22, a region of its own made in backward) and the forward call's backward (23)
/// consumes the recomputation. With `leak`, the recomputed q/k/v outlives the step (as with
/// probes that held the autograd nodes of attention calls). With `mask_saved`, the forward call
/// also takes the parameter (id 1) as its mask, and autograd saved the parameter elsewhere.
fn checkpointed_attention_trace(leak: bool, mask_saved: bool) -> trace::Trace {
    const MIB: u64 = 1 << 20;
    let run = |name: &str, b: u64| {
        let a = |id: u64, module: u64, phase: &str, region: i64| {
            serde_json::json!([
                "a",
                id,
                MIB * b,
                0,
                [b, 1024, 256],
                1,
                module,
                phase,
                region
            ])
        };
        let f = |id: u64, phase: &str, region: i64| serde_json::json!(["f", id, phase, region]);
        let mut ev = vec![
            a(10, 3, "f", -1),
            a(11, 3, "f", 0),
            a(12, 3, "f", 0),
            f(12, "f", -1),
            f(10, "f", -1),
            f(11, "f", -1),
            a(20, 3, "b", -1),
            a(21, 3, "b", 1),
            a(22, 3, "b", 1),
            a(23, 2, "b", 0),
            f(21, "b", 0),
            f(22, "b", 0),
        ];
        if !leak {
            ev.push(f(20, "b", 0));
        }
        ev.push(f(23, "b", -1));
        let region = |id: u32, phase: &str, inputs: &[u64], output: u64| {
            serde_json::json!({
                "id": id, "kind": "sdpa", "q": [b, 4, 16, 8], "k": [b, 4, 16, 8],
                "v": [b, 4, 16, 8], "dtype": "float32", "requires_grad": true, "phase": phase,
                "outputs": [output], "inputs": inputs
            })
        };
        let alive: &[u64] = if leak { &[1, 20] } else { &[1] };
        let (fwd_inputs, saved): (&[u64], &[u64]) = if mask_saved {
            (&[10, 1], &[1])
        } else {
            (&[10], &[])
        };
        let regions = vec![region(0, "f", fwd_inputs, 11), region(1, "b", &[20], 21)];
        hand_made_run(name, b, ev, saved, alive, regions)
    };
    hand_made_trace(
        &[
            "float32",
            "aten._scaled_dot_product_flash_attention_for_cpu.default",
            "",
            "attn",
            "w",
        ],
        run,
    )
}

/// Under checkpointing the fused-attention rule keeps nothing of the forward call (the checkpoint
/// discards what it saves) and keeps the recomputation's q/k/v, output and log-sum-exp until the
/// checkpointed backward has used them. Holding the forward call's q/k/v until its backward (the
/// rule for calls whose saved tensors autograd keeps) would add a fourth 8 MiB storage.
#[test]
fn checkpointed_attention_keeps_only_the_recomputation() {
    const MIB: u64 = 1 << 20;
    let t = checkpointed_attention_trace(false, false);
    let e = trace::estimate(&t, &knobs(8)).unwrap();
    // at the peak: recomputed q/k/v and output, the backward's gradient (3 x 8 MiB), the
    // parameter, the log-sum-exp and the backward workspace (a few KiB)
    let over = e.peak_allocated_bytes - 3 * 8 * MIB;
    assert!(over < MIB, "{} bytes over 24 MiB", over);
    assert!(
        !e.notes.iter().any(|n| n.contains("still alive")),
        "{:?}",
        e.notes
    );
}

/// A persistent storage among the call's inputs (a mask buffer) that autograd saved for another
/// op says nothing of this call: the checkpointed call still keeps nothing (NavDP's decoder, whose
/// self-attention takes the causal-mask buffer, kept every block's projections: +0.4 GiB).
#[test]
fn a_saved_persistent_mask_does_not_keep_a_checkpointed_call() {
    let plain = trace::estimate(&checkpointed_attention_trace(false, false), &knobs(8)).unwrap();
    let masked = trace::estimate(&checkpointed_attention_trace(false, true), &knobs(8)).unwrap();
    assert_eq!(masked.peak_allocated_bytes, plain.peak_allocated_bytes);
}

/// A trace in which recomputed storages outlive the step (an older probe) is flagged.
#[test]
fn leaked_recomputation_is_flagged() {
    let t = checkpointed_attention_trace(true, false);
    let e = trace::estimate(&t, &knobs(8)).unwrap();
    assert!(
        e.notes.iter().any(|n| n.contains("still alive")),
        "{:?}",
        e.notes
    );
}
