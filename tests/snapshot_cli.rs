//! `oomdoc snapshot` on the real snapshots in tests/fixtures/snapshots (H100, torch 2.11).
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/snapshots")
        .join(name)
}

const NAVDP: &str = "navdp_like_fp32_b16_oom_at_23.55GiB.pickle.gz";
const GPT2_OOM: &str = "gpt2_fp32_b8_oom_at_8GiB.pickle.gz";
const GPT2_TRAIN: &str = "gpt2_bf16_b4_two_steps_history.pickle.gz";

fn oomdoc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .args(args)
        .env("LANG", "C")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .output()
        .expect("run oomdoc")
}

fn json_of(file: &Path) -> Value {
    let out = oomdoc(&["snapshot", file.to_str().unwrap(), "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn stats(name: &str) -> Value {
    let s = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

/// Totals equal the segment sums (from the parsed snapshot) and the saved memory_stats.
fn check_totals(snapshot: &str, stats_file: &str) {
    let path = fixture(snapshot);
    let j = json_of(&path);
    let snap = oomdoc::snapshot::load(&path).unwrap();
    let reserved: u64 = snap.segments.iter().map(|s| s.total_size).sum();
    let allocated: u64 = snap.segments.iter().map(|s| s.allocated_size).sum();
    let active: u64 = snap.segments.iter().map(|s| s.active_size).sum();
    assert_eq!(u(&j["reserved_bytes"]), reserved);
    assert_eq!(u(&j["allocated_bytes"]), allocated);
    assert_eq!(u(&j["active_bytes"]), active);
    assert_eq!(u(&j["segments"]), snap.segments.len() as u64);
    let st = stats(stats_file);
    assert_eq!(reserved, u(&st["reserved_bytes.all.current"]));
    assert_eq!(allocated, u(&st["allocated_bytes.all.current"]));
    assert_eq!(active, u(&st["active_bytes.all.current"]));
    assert_eq!(
        u(&j["segments"]),
        u(&st["segment.all.current"]),
        "segment count"
    );
    assert_eq!(
        u(&j["requested_bytes"]),
        u(&st["requested_bytes.all.current"])
    );
    assert_eq!(
        u(&j["fragmentation"]["inactive_split_bytes"]),
        u(&st["inactive_split_bytes.all.current"])
    );
    assert_eq!(
        u(&j["fragmentation"]["inactive_split_blocks"]),
        u(&st["inactive_split.all.current"])
    );
    // Categories add up to the memory at the analysed moment.
    let cats: u64 = j["categories"].as_object().unwrap().values().map(u).sum();
    assert_eq!(cats, u(&j["moment"]["allocated_bytes"]));
}

#[test]
fn totals_match_segments_and_memory_stats() {
    check_totals(NAVDP, "navdp24_memory_stats.json");
    check_totals(GPT2_OOM, "gpt2_8g_memory_stats.json");
    check_totals(GPT2_TRAIN, "gpt2_train_memory_stats.json");
}

#[test]
fn oom_event_is_reported() {
    let j = json_of(&fixture(NAVDP));
    assert_eq!(u(&j["oom"]["requested_bytes"]), 202_113_024);
    assert_eq!(u(&j["oom"]["device_free_bytes"]), 59_049_705_472);
    assert_eq!(j["oom"]["phase"], "forward");
    let j = json_of(&fixture(GPT2_OOM));
    assert_eq!(u(&j["oom"]["requested_bytes"]), 6_291_456);
    assert_eq!(u(&j["oom"]["device_free_bytes"]), 75_728_355_328);
    // The same numbers as the OOM trace entry of the parsed file.
    let snap = oomdoc::snapshot::load(&fixture(GPT2_OOM)).unwrap();
    let e = snap.device_traces[0]
        .iter()
        .find(|e| e.action == oomdoc::snapshot::Action::Oom)
        .unwrap();
    assert_eq!(e.size, 6_291_456);
    assert_eq!(e.device_free, Some(75_728_355_328));
    // No OOM in the training history: the peak is analysed.
    let j = json_of(&fixture(GPT2_TRAIN));
    assert!(j["oom"].is_null());
    assert_eq!(j["moment"]["kind"], "peak");
}

#[test]
fn navdp_top_sites_and_scope() {
    let j = json_of(&fixture(NAVDP));
    let sites = j["top_sites"].as_array().unwrap();
    let bytes: Vec<u64> = sites.iter().map(|s| u(&s["bytes"])).collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "biggest first");
    assert!(sites[0]["file"]
        .as_str()
        .unwrap()
        .ends_with("navdp_model.py"));
    assert_eq!(sites[0]["line"], 56);
    assert_eq!(sites[0]["kind"], "mlp");
    assert_eq!(sites[1]["line"], 42);
    assert_eq!(sites[1]["kind"], "eager_attention");
    for s in sites {
        let f = s["file"].as_str().unwrap();
        assert!(
            !f.contains("site-packages") && !f.contains("/torch/"),
            "{f}"
        );
    }
    let gib = |v: &Value| u(v) as f64 / (1u64 << 30) as f64;
    assert!((gib(&sites[0]["bytes"]) - 10.9).abs() < 0.05);
    assert!((gib(&sites[1]["bytes"]) - 7.3).abs() < 0.05);
    let share = j["scope"]["share"].as_f64().unwrap();
    assert!((share - 0.97).abs() < 0.005, "{share}");
    assert_eq!(j["scope"]["caller"]["function"], "run_blocks");
    assert_eq!(j["scope"]["callee_lines"], serde_json::json!([55, 56]));
    // Parameters are the model.to() copies; the rest are activations held for backward.
    assert!(u(&j["categories"]["parameters"]) > 300 << 20);
    assert!(u(&j["categories"]["activations"]) > 22 << 30);
}

#[test]
fn navdp_text_report_says_it_plainly() {
    let out = oomdoc(&["snapshot", fixture(NAVDP).to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("About 97% of the memory at the OOM"),
        "{text}"
    );
    assert!(text.contains("10.9 GiB at the MLP line navdp_model.py:56"));
    assert!(text.contains("7.3 GiB at the eager softmax-attention line navdp_model.py:42"));
    assert!(text.contains("asking for 192.75 MiB during the forward pass"));
}

#[test]
fn training_history_has_gradients_and_optimizer_state() {
    let j = json_of(&fixture(GPT2_TRAIN));
    // GPT-2 124M fp32 master weights: 2 Adam moments ≈ 2 x parameters.
    let p = u(&j["categories"]["parameters"]) as f64;
    let o = u(&j["categories"]["optimizer_state"]) as f64;
    assert!(
        p > 400e6 && (o / p - 2.0).abs() < 0.05,
        "params {p} optimizer {o}"
    );
    assert!(j["timeline"]["points"].as_array().unwrap().len() > 100);
    assert_eq!(j["timeline"]["unit"], "us");
}

#[test]
fn plain_pickle_and_legacy_format() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("navdp.pickle");
    let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(fixture(NAVDP)).unwrap());
    let mut raw = Vec::new();
    gz.read_to_end(&mut raw).unwrap();
    std::fs::write(&plain, &raw).unwrap();
    let a = json_of(&plain);
    let b = json_of(&fixture(NAVDP));
    assert_eq!(a["allocated_bytes"], b["allocated_bytes"]);
    assert_eq!(a["top_sites"], b["top_sites"]);

    let j = json_of(&fixture("legacy_1_13_segments.pickle"));
    assert_eq!(j["format"], "legacy_segment_list");
    assert_eq!(u(&j["segments"]), 2);
    assert_eq!(u(&j["allocated_bytes"]), 16_777_216 + 1024);
    assert_eq!(j["top_sites"][0]["line"], 88);
    assert!(j["oom"].is_null());
}

fn expect_bad(file: &Path, needle: &str) {
    let out = oomdoc(&["snapshot", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {}",
        file.display()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("oomdoc: error: "), "{err}");
    assert!(err.contains(needle), "{err} should contain {needle}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_input_is_one_line_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    std::fs::write(p("log.txt"), "RuntimeError: CUDA out of memory.\n").unwrap();
    expect_bad(&p("log.txt"), "not a pickle");

    std::fs::write(p("empty.pickle"), "").unwrap();
    expect_bad(&p("empty.pickle"), "empty file");

    expect_bad(&p("missing.pickle"), "missing.pickle");

    // Truncated gzip stream.
    let gz = std::fs::read(fixture(NAVDP)).unwrap();
    std::fs::write(p("cut.pickle.gz"), &gz[..gz.len() / 2]).unwrap();
    expect_bad(&p("cut.pickle.gz"), "cut.pickle.gz");

    // Truncated plain pickle.
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    std::fs::write(p("cut.pickle"), &raw[..raw.len() / 3]).unwrap();
    expect_bad(&p("cut.pickle"), "truncated");

    // Corrupt gzip body.
    let mut bad = gz.clone();
    for b in bad.iter_mut().skip(40).take(200) {
        *b ^= 0x5a;
    }
    std::fs::write(p("corrupt.pickle.gz"), &bad).unwrap();
    expect_bad(&p("corrupt.pickle.gz"), "corrupt.pickle.gz");

    // A pickle that would run code: refused, never executed.
    std::fs::write(
        p("evil.pickle"),
        b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c\x04echo\x85R.",
    )
    .unwrap();
    expect_bad(&p("evil.pickle"), "refusing pickle opcode STACK_GLOBAL");

    // A valid pickle that is not a snapshot.
    std::fs::write(p("list.pickle"), b"\x80\x04K\x01.").unwrap();
    expect_bad(&p("list.pickle"), "not a PyTorch memory snapshot");
    std::fs::write(p("dict.pickle"), b"\x80\x04}\x94.").unwrap();
    expect_bad(&p("dict.pickle"), "segments");
}

#[test]
fn markdown_zh_and_html() {
    let f = fixture(NAVDP);
    let out = oomdoc(&["snapshot", f.to_str().unwrap(), "--format", "markdown"]);
    assert!(out.status.success());
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.starts_with("# Memory snapshot"));
    assert!(md.contains("| memory | share | source line |"));

    let out = oomdoc(&["snapshot", f.to_str().unwrap(), "--lang", "zh"]);
    assert!(out.status.success());
    let zh = String::from_utf8(out.stdout).unwrap();
    assert!(zh.contains("显存快照"));
    assert!(zh.contains("朴素 softmax 注意力"));

    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let out = oomdoc(&[
        "snapshot",
        f.to_str().unwrap(),
        "--format",
        "html",
        "-o",
        html.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    for id in [
        "id=\"timeline\"",
        "id=\"sites\"",
        "id=\"segmap\"",
        "id=\"data\"",
    ] {
        assert!(page.contains(id), "{id}");
    }
    // Self-contained: nothing is fetched.
    for bad in [
        "<script src",
        "<link",
        "@import",
        "url(",
        "https://",
        "<img",
    ] {
        assert!(!page.contains(bad), "page contains {bad}");
    }
    let http: Vec<&str> = page
        .match_indices("http://")
        .map(|(i, _)| &page[i..i + 30])
        .collect();
    assert!(
        http.iter()
            .all(|h| h.starts_with("http://www.w3.org/2000/svg")),
        "{http:?}"
    );
}

#[test]
fn source_lines_name_the_blocks() {
    let src = fixture("src");
    let out = oomdoc(&[
        "snapshot",
        fixture(NAVDP).to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("About 97% of the memory at the OOM (22.4 GiB of 23.1 GiB) was allocated inside Block.forward"),
        "{text}"
    );
    assert!(text.contains("in ViTS14.forward (navdp_model.py:79)"));
    assert!(text.contains("navdp_model.py:42 (Attention.forward): o = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v"));
    // --no-source reads nothing.
    let out = oomdoc(&[
        "snapshot",
        fixture(NAVDP).to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
        "--no-source",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("Block.forward"));
}

#[test]
fn library_lines_for_a_transformers_model() {
    let j = json_of(&fixture(GPT2_OOM));
    // The user's own line is the model call; inside transformers the GELU holds the most.
    assert_eq!(j["top_sites"][0]["line"], 52);
    let lib = &j["library_sites"][0];
    assert!(lib["file"]
        .as_str()
        .unwrap()
        .ends_with("transformers/activations.py"));
    assert!(j["top_sites"][0]["kind"] == "other");
}
