//! Rendered `fit` and `gpu --list` reports (insta snapshots), from fixed data so they are stable.
use oomdoc::report::{Ctx, Format, Lang};
use oomdoc::run::fit::{Choice, FitConfig, FitReport, LrNote, Stop, Trial, TrialResult};

fn trial(batch: u64, accum: u64, result: TrialResult, secs: f64, peak_gib: Option<f64>) -> Trial {
    Trial {
        batch,
        accum,
        result,
        exit_code: if result == TrialResult::Fits { 0 } else { 1 },
        duration_s: secs,
        peak_gpu_bytes: peak_gib.map(|g| (g * (1u64 << 30) as f64) as u64),
        oom_line: (result == TrialResult::OutOfMemory).then(|| {
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 194.00 MiB.".into()
        }),
        output_tail: None,
    }
}

fn sample() -> FitReport {
    let template: Vec<String> = [
        "python",
        "train.py",
        "--batch-size",
        "{batch}",
        "--grad-accum",
        "{accum}",
        "--max-steps",
        "{steps}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    FitReport {
        template,
        config: FitConfig {
            min_batch: 1,
            max_batch: 40,
            start_batch: Some(8),
            multiple_of: 1,
            effective_batch: Some(40),
            steps: 5,
            max_trials: 16,
            time_limit: None,
            trial_timeout: None,
        },
        trials: vec![
            trial(8, 5, TrialResult::Fits, 41.2, Some(12.4)),
            trial(16, 3, TrialResult::Fits, 44.0, Some(22.8)),
            trial(32, 2, TrialResult::OutOfMemory, 12.5, Some(23.5)),
            trial(24, 2, TrialResult::OutOfMemory, 12.1, Some(23.5)),
            trial(20, 2, TrialResult::OutOfMemory, 11.9, Some(23.5)),
            trial(18, 3, TrialResult::OutOfMemory, 11.8, Some(23.5)),
            trial(17, 3, TrialResult::OutOfMemory, 11.7, Some(23.5)),
            trial(10, 4, TrialResult::Fits, 42.3, Some(15.0)),
        ],
        stop: Stop::Complete,
        largest_fitting: Some(16),
        smallest_failing: Some(17),
        best: Some(Choice {
            batch: 10,
            accum: 4,
            effective_batch: 40,
        }),
        alternative: Some(Choice {
            batch: 16,
            accum: 3,
            effective_batch: 48,
        }),
        lr_note: None,
        command: Some("python train.py --batch-size 10 --grad-accum 4 --max-steps {steps}".into()),
        gpu_unavailable: None,
        total_duration_s: 199.5,
    }
}

fn render(r: &FitReport, lang: Lang) -> String {
    Ctx::new(Format::Text, lang).render_doc(&oomdoc::run::report::fit_doc(r, lang))
}

#[test]
fn fit_report_en_zh() {
    let r = sample();
    insta::assert_snapshot!("fit_report_en", render(&r, Lang::En));
    insta::assert_snapshot!("fit_report_zh", render(&r, Lang::Zh));
}

#[test]
fn fit_report_with_lr_note_markdown() {
    let mut r = sample();
    r.best = r.alternative.take();
    r.lr_note = Some(LrNote {
        wanted_effective_batch: 40,
        effective_batch: 48,
        linear_scale: 1.2,
        sqrt_scale: 1.2f64.sqrt(),
    });
    r.command = Some("python train.py --batch-size 16 --grad-accum 3 --max-steps {steps}".into());
    let md = Ctx::new(Format::Markdown, Lang::En)
        .render_doc(&oomdoc::run::report::fit_doc(&r, Lang::En));
    insta::assert_snapshot!("fit_report_lr_note_md", md);
}

#[test]
fn gpu_list_text() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .args(["gpu", "--list", "--lang", "en"])
        .output()
        .unwrap();
    insta::assert_snapshot!("gpu_list_en", String::from_utf8_lossy(&out.stdout));
}
