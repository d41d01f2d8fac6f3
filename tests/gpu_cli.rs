//! `oomdoc gpu`: local GPUs through NVML (or one clear line without a driver) and the catalogue.
use std::process::Command;

fn oomdoc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .args(args)
        .env("LANG", "C")
        .output()
        .expect("run oomdoc")
}

#[test]
fn gpu_json_has_gpus_or_a_reason() {
    let out = oomdoc(&["gpu", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let gpus = v["gpus"].as_array().expect("gpus array");
    if gpus.is_empty() {
        // No driver (CI): the reason says why.
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    } else {
        for g in gpus {
            assert!(g["total_bytes"].as_u64().unwrap() > 0, "{g}");
            assert!(g["name"].as_str().is_some());
            assert!(g["processes"].is_array());
        }
    }
}

#[test]
fn gpu_text_is_one_clear_line_without_driver() {
    let out = oomdoc(&["gpu"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let json = oomdoc(&["gpu", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    if v["gpus"].as_array().unwrap().is_empty() {
        assert!(text.contains("No GPU information"), "{text}");
    } else {
        assert!(text.contains("GPU 0"), "{text}");
    }
}

#[test]
fn list_shows_the_catalogue() {
    let out = oomdoc(&["gpu", "--list", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let list = v["catalogue"].as_array().expect("catalogue");
    assert!(list.len() >= 18);
    let ids: Vec<&str> = list.iter().filter_map(|g| g["id"].as_str()).collect();
    for id in [
        "t4", "rtx3090", "rtx4090", "a100-80", "h100-sxm", "h200", "mi300x",
    ] {
        assert!(ids.contains(&id), "{id} missing");
    }
    let rtx3090 = list.iter().find(|g| g["id"] == "rtx3090").unwrap();
    assert_eq!(
        rtx3090["memory_bytes"].as_u64().unwrap(),
        2355 * (1u64 << 30) / 100
    );

    let text = oomdoc(&["gpu", "--list"]);
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.contains("rtx3090") && t.contains("23.55 GiB"), "{t}");
    let zh = oomdoc(&["gpu", "--list", "--lang", "zh"]);
    assert!(String::from_utf8_lossy(&zh.stdout).contains("内置 GPU 目录"));
}
