//! `oomdoc diagnose` as a user runs it: files, stdin, gzip, empty and non-OOM input, bad input.
use std::io::Write;
use std::process::{Command, Stdio};

fn oomdoc(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .args(args)
        .env("LANG", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oomdoc");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(data) = stdin {
            let _ = pipe.write_all(data);
        }
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MSG: &str = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 23.55 GiB of which 11.06 MiB is free. Including non-PyTorch memory, this process has 23.53 GiB memory in use. Of the allocated memory 22.90 GiB is allocated by PyTorch, and 194.87 MiB is reserved by PyTorch but unallocated.\n";

#[test]
fn empty_and_no_oom_input_is_not_an_error() {
    let (code, out, err) = oomdoc(&["diagnose", "--format", "json"], Some(b""));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "{\n  \"events\": []\n}\n", "")
    );
    let (code, out, _) = oomdoc(
        &["diagnose", "-"],
        Some(b"epoch 1 loss 0.5\nepoch 2 loss 0.4\n"),
    );
    assert_eq!(code, 0);
    assert!(out.contains("no OOM event found (2 lines read)"), "{out}");
    let (code, out, _) = oomdoc(&["diagnose", "--lang", "zh"], Some(b"ok\n"));
    assert_eq!(code, 0);
    assert!(out.contains("未发现内存不足"), "{out}");
}

#[test]
fn stdin_and_file_give_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.log");
    std::fs::write(&path, format!("start\n{MSG}end\n")).unwrap();
    let (c1, from_file, _) = oomdoc(
        &["diagnose", path.to_str().unwrap(), "--format", "json"],
        None,
    );
    let (c2, from_stdin, _) = oomdoc(
        &["diagnose", "--format", "json"],
        Some(format!("start\n{MSG}end\n").as_bytes()),
    );
    assert_eq!((c1, c2), (0, 0));
    assert_eq!(from_file, from_stdin);
    let v: serde_json::Value = serde_json::from_str(&from_file).unwrap();
    assert_eq!(v["events"][0]["kind"], "cuda_oom");
    assert_eq!(v["events"][0]["line"], 2);
    assert_eq!(v["events"][0]["requested_bytes"], 20 * 1024 * 1024);
}

#[test]
fn gzip_logs_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.log.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(MSG.repeat(2).as_bytes()).unwrap();
    gz.write_all(MSG.replace("20.00 MiB", "40.00 MiB").as_bytes())
        .unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let (code, out, err) = oomdoc(
        &["diagnose", path.to_str().unwrap(), "--format", "json"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // the repeated message is one event, the different one another
    assert_eq!(v["events"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(v["events"][1]["line"], 3);
}

#[test]
fn missing_file_is_one_line_exit_2() {
    let (code, out, err) = oomdoc(&["diagnose", "/nonexistent/train.log"], None);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("oomdoc: error: /nonexistent/train.log: cannot open"),
        "{err}"
    );
}

#[test]
fn directory_is_one_line_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = oomdoc(&["diagnose", dir.path().to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn binary_garbage_is_one_line_exit_2() {
    let mut data = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..10_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        data.push((x >> 16) as u8);
    }
    let (code, out, err) = oomdoc(&["diagnose"], Some(&data));
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("binary data, not a text log"), "{err}");
}

#[test]
fn markdown_report_has_the_seed_sections() {
    let (code, out, _) = oomdoc(
        &["diagnose", "--format", "markdown", "--lang", "zh"],
        Some(MSG.as_bytes()),
    );
    assert_eq!(code, 0);
    for h in [
        "# 内存不足问题分析和解决方案",
        "### 问题分析",
        "### 当前状态",
        "### 解决方案（按优先级排序）",
        "**GPU总容量**",
        "**空闲内存**",
    ] {
        assert!(out.contains(h), "{h}\n{out}");
    }
}
