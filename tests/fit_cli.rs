//! `oomdoc fit` against a fake trainer that "allocates" against a cap and prints PyTorch 2.11's
//! real OOM message. Defaults of the trainer: 2.0 GiB + 1.3 GiB per sample against 23.55 GiB, so
//! micro-batch 16 is the largest that fits (2 + 1.3 x 16 = 22.8; x 17 = 24.1).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn trainer() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/run/fake_trainer.py")
        .display()
        .to_string()
}

const TEMPLATE: [&str; 7] = [
    "--batch-size",
    "{batch}",
    "--grad-accum",
    "{accum}",
    "--max-steps",
    "{steps}",
    "",
];

fn fit(flags: &[&str], env: &[(&str, &str)], log: Option<&PathBuf>) -> (Output, serde_json::Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oomdoc"));
    c.env("LANG", "C")
        .arg("fit")
        .arg("--format")
        .arg("json")
        .args(flags);
    // -S: no site module, half of Python's start-up time (the trainer needs only the stdlib).
    c.arg("--").arg("python3").arg("-S").arg(trainer());
    c.args(&TEMPLATE[..6]);
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(l) = log {
        c.env("FAKE_LOG", l);
    }
    let out = c.output().expect("run oomdoc");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, v)
}

/// Lines "batch accum steps result" the trainer appended.
fn runs(log: &Path) -> Vec<(u64, u64, u64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].to_string(),
            )
        })
        .collect()
}

#[test]
fn finds_the_largest_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let (out, v) = fit(&["--steps", "3"], &[], Some(&log));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["largest_fitting"], 16);
    assert_eq!(v["smallest_failing"], 17);
    assert_eq!(v["stop"], "complete");
    assert_eq!(v["best"]["batch"], 16);
    assert_eq!(v["best"]["accum"], 1);
    // Every size reported as fitting completed its steps; every trial is in the log.
    let r = runs(&log);
    assert_eq!(r.len(), v["trials"].as_array().unwrap().len());
    for (t, (b, _, steps, res)) in v["trials"].as_array().unwrap().iter().zip(&r) {
        assert_eq!(t["batch"].as_u64().unwrap(), *b);
        assert_eq!(*steps, 3);
        let fits = t["result"] == "fits";
        assert_eq!(fits, res == "ok", "{t}");
        assert_eq!(fits, *b <= 16);
        if !fits {
            assert!(t["oom_line"]
                .as_str()
                .unwrap()
                .contains("CUDA out of memory"));
        }
    }
    // Exponential 1..32, then binary search 16..32: 6 + 4 trials.
    assert_eq!(r.len(), 10);
    assert_eq!(
        v["command"].as_str().unwrap(),
        format!(
            "python3 -S {} --batch-size 16 --grad-accum 1 --max-steps {{steps}}",
            trainer()
        )
    );
}

#[test]
fn keeps_the_effective_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    // 48 = 16 x 3 divides: accumulation 3.
    let (out, v) = fit(
        &[
            "--effective-batch",
            "48",
            "--start-batch",
            "16",
            "--max-batch",
            "17",
        ],
        &[],
        Some(&log),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        v["best"],
        serde_json::json!({"batch": 16, "accum": 3, "effective_batch": 48})
    );
    assert!(v["lr_note"].is_null());
    for (b, a, _, _) in runs(&log) {
        assert_eq!(a, 48u64.div_ceil(b), "accumulation for batch {b}");
    }
    // 40 is not a multiple of 16: the largest divisor that fits (10) keeps it, verified by a trial;
    // 16 stays as the alternative with the learning-rate consequence.
    let log2 = dir.path().join("runs2");
    let (out, v) = fit(
        &[
            "--effective-batch",
            "40",
            "--start-batch",
            "16",
            "--max-batch",
            "17",
        ],
        &[],
        Some(&log2),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        v["best"],
        serde_json::json!({"batch": 10, "accum": 4, "effective_batch": 40})
    );
    assert_eq!(
        v["alternative"],
        serde_json::json!({"batch": 16, "accum": 3, "effective_batch": 48})
    );
    let r = runs(&log2);
    assert!(
        r.iter()
            .any(|(b, a, _, res)| *b == 10 && *a == 4 && res == "ok"),
        "{r:?}"
    );
    let text = Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .env("LANG", "C")
        .args([
            "fit",
            "--effective-batch",
            "40",
            "--start-batch",
            "16",
            "--max-batch",
            "17",
            "--",
            "python3",
            "-S",
            &trainer(),
        ])
        .args(&TEMPLATE[..6])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.contains("keeps the effective batch at 40"), "{t}");
    assert!(t.contains("does not divide 40"), "{t}");
    // Progress goes to stderr, one line per trial start and end.
    let se = String::from_utf8_lossy(&text.stderr);
    assert!(se.contains("trial 1: micro-batch 16"), "{se}");
}

#[test]
fn lr_note_when_the_effective_batch_cannot_be_kept() {
    // 17 is prime: no divisor fits except 1, which the trial limit leaves no room to verify.
    let (out, v) = fit(
        &[
            "--effective-batch",
            "17",
            "--start-batch",
            "16",
            "--max-trials",
            "2",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        v["best"],
        serde_json::json!({"batch": 16, "accum": 2, "effective_batch": 32})
    );
    assert_eq!(v["lr_note"]["wanted_effective_batch"], 17);
    assert!((v["lr_note"]["linear_scale"].as_f64().unwrap() - 32.0 / 17.0).abs() < 1e-9);
}

#[test]
fn respects_the_trial_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let (out, v) = fit(&["--max-trials", "3"], &[], Some(&log));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["stop"], "trial_limit");
    assert_eq!(v["trials"].as_array().unwrap().len(), 3);
    assert_eq!(runs(&log).len(), 3);
    assert_eq!(v["best"]["batch"], 4);
}

#[test]
fn time_limit_stops_the_search() {
    let (out, v) = fit(
        &["--time-limit", "0.6", "--start-batch", "4"],
        &[("FAKE_STEP_SECONDS", "0.1")],
        None,
    );
    assert_eq!(v["stop"], "time_limit", "{v}");
    // Whatever it reports completed.
    if let Some(b) = v["best"]["batch"].as_u64() {
        assert!(v["trials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["batch"] == b && t["result"] == "fits"));
        assert_eq!(out.status.code(), Some(0));
    }
}

#[test]
fn sigkill_counts_as_out_of_memory() {
    let (out, v) = fit(
        &["--start-batch", "16", "--max-batch", "17"],
        &[("FAKE_OOM_STYLE", "sigkill")],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["best"]["batch"], 16);
    assert_eq!(v["trials"][1]["result"], "out_of_memory");
    assert_eq!(v["trials"][1]["exit_code"], 137);
}

#[test]
fn caught_oom_is_not_a_fit() {
    // The script prints the OOM and exits 0: the size is not recommended.
    let (out, v) = fit(
        &["--start-batch", "16", "--max-batch", "17"],
        &[("FAKE_OOM_STYLE", "caught")],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["best"]["batch"], 16);
    assert_eq!(v["smallest_failing"], 17);
}

#[test]
fn nothing_fits_is_exit_1() {
    let (out, v) = fit(&["--start-batch", "4"], &[("FAKE_CAP_GIB", "2.5")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(v["best"].is_null());
    assert_eq!(v["smallest_failing"], 1);
    assert!(v["command"].is_null());
}

#[test]
fn other_failure_stops_with_its_code() {
    let (out, v) = fit(&[], &[("FAKE_FAIL", "1")], None);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(v["stop"], "command_failed");
    assert_eq!(v["trials"].as_array().unwrap().len(), 1);
    assert!(v["trials"][0]["output_tail"]
        .as_str()
        .unwrap()
        .contains("No module named 'dataset'"));
}

#[test]
fn bad_input_is_exit_2() {
    let bin = env!("CARGO_BIN_EXE_oomdoc");
    let out = Command::new(bin)
        .args(["fit", "--", "python3", "train.py", "--batch-size", "8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(se.contains("no {batch} placeholder"), "{se}");
    assert_eq!(se.lines().count(), 1);

    let out = Command::new(bin)
        .args(["fit", "--", "/no/such/trainer-oomdoc", "--bs", "{batch}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));

    let out = Command::new(bin).args(["fit"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    // --effective-batch without {accum}.
    let out = Command::new(bin)
        .args([
            "fit",
            "--effective-batch",
            "32",
            "--",
            "python3",
            "t.py",
            "--bs",
            "{batch}",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("{accum}"));
}

#[test]
fn ctrl_c_stops_the_search_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let child = Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .env("LANG", "C")
        .env("FAKE_STEP_SECONDS", "30")
        .env("FAKE_LOG", &log)
        .args([
            "fit",
            "--format",
            "json",
            "--grace",
            "2",
            "--",
            "python3",
            "-S",
            &trainer(),
        ])
        .args(&TEMPLATE[..6])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the first trial start, then interrupt oomdoc as Ctrl-C would.
    std::thread::sleep(std::time::Duration::from_millis(800));
    // SAFETY: sending SIGINT to the oomdoc process this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stop"], "interrupted");
    assert_eq!(v["trials"][0]["result"], "interrupted");
    assert!(v["best"].is_null());
    assert!(
        runs(&log).is_empty(),
        "the interrupted trial never completed"
    );
}

#[test]
fn multiples_only() {
    // Multiples of 4 between 4 and 64: 16 fits, 20 does not.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let (out, v) = fit(
        &[
            "--multiple-of",
            "4",
            "--start-batch",
            "16",
            "--max-batch",
            "64",
        ],
        &[],
        Some(&log),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["best"]["batch"], 16);
    assert_eq!(v["smallest_failing"], 20);
    for (b, _, _, _) in runs(&log) {
        assert_eq!(b % 4, 0, "tried {b}");
    }
    let bin = env!("CARGO_BIN_EXE_oomdoc");
    let out = Command::new(bin)
        .args([
            "fit",
            "--multiple-of",
            "8",
            "--max-batch",
            "7",
            "--",
            "python3",
            "t.py",
            "--bs",
            "{batch}",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no multiple of 8"));
}
