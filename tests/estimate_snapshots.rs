//! Rendered `estimate` reports (text, en and zh), reviewed snapshots.
use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .args(args)
        .env("LANG", "C")
        .output()
        .expect("run oomdoc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn estimate_text_en() {
    insta::assert_snapshot!(run(&[
        "estimate",
        "--model",
        "preset:resnet18",
        "--batch",
        "64",
        "--gpu",
        "rtx3090"
    ]));
}

#[test]
fn estimate_text_zh() {
    insta::assert_snapshot!(run(&[
        "--lang",
        "zh",
        "estimate",
        "--model",
        "preset:navdp",
        "--precision",
        "bf16-mixed",
        "--attention",
        "sdpa",
    ]));
}
