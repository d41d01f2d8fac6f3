//! The `run` report for an OOM with GPU figures (fixed data: CI has no GPU).
use oomdoc::report::{Ctx, Format, Lang};
use oomdoc::run::exec::{GpuPeak, GpuWatch, Outcome};
use oomdoc::run::report::{run_doc, RunReport};

const GIB: u64 = 1 << 30;

fn sample(baseline: u64, own: Option<u64>) -> RunReport {
    let line = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 194.00 MiB. GPU 0 has a total capacity of 23.55 GiB of which 11.38 MiB is free.";
    RunReport {
        events: Vec::new(),
        command: ["python", "train.py", "--batch-size", "16"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        oomdoc_exit_code: 1,
        outcome: Outcome {
            exit_code: Some(1),
            signal: None,
            timed_out: false,
            interrupted_by: None,
            duration_s: 73.4,
            oom_line: Some(line.into()),
            oom_excerpt: Some(format!(
                "  File \"train.py\", line 88, in <module>\n    loss = model(batch).mean()\n{line}"
            )),
            leftover_killed: 2,
            gpu: GpuWatch {
                devices: vec![GpuPeak {
                    index: 0,
                    name: "NVIDIA GeForce RTX 3090".into(),
                    total_bytes: 24 * GIB,
                    baseline_used_bytes: baseline,
                    peak_device_used_bytes: 23 * GIB + GIB / 2,
                    peak_process_bytes: own,
                }],
                samples: 367,
                unavailable: None,
            },
            tail: String::new(),
        },
        snapshot_on_oom: true,
        snapshots: vec!["/runs/oomdoc-oom-4242.pickle".into()],
        log_file: Some("train.log".into()),
    }
}

fn render(r: &RunReport, lang: Lang) -> String {
    Ctx::new(Format::Text, lang).render_doc(&run_doc(r, None, lang))
}

#[test]
fn oom_with_measured_peak() {
    // The command filled the card itself.
    let r = sample(GIB / 2, Some(23 * GIB));
    insta::assert_snapshot!("run_oom_en", render(&r, Lang::En));
    insta::assert_snapshot!("run_oom_zh", render(&r, Lang::Zh));
    // Another process held memory before it started; NVML did not show the command's own share.
    let r = sample(6 * GIB, None);
    let t = render(&r, Lang::En);
    assert!(
        t.contains("Other processes already held 6.00 GiB on GPU 0"),
        "{t}"
    );
    assert!(
        t.contains("this command's own share was not visible"),
        "{t}"
    );
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(
        v["gpu"]["devices"][0]["peak_process_bytes"],
        serde_json::Value::Null
    );
    assert_eq!(v["exit_code"], 1);
}
