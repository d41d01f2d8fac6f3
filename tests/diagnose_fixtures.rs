//! Every real OOM log in `tests/fixtures/oom-logs/` through the binary, `--format json`, compared
//! with its reviewed snapshot (`tests/snapshots/diagnose_fixtures__*.snap`).
use std::path::Path;
use std::process::Command;

fn diagnose(path: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oomdoc"))
        .arg("diagnose")
        .arg(path)
        .args(extra)
        .env("LANG", "C")
        .output()
        .expect("run oomdoc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oom-logs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fixture_matches_its_json_snapshot() {
    let files = fixtures();
    assert!(files.len() >= 36, "fixtures copied: {}", files.len());
    for f in files {
        let (code, stdout, stderr) = diagnose(&f, &["--format", "json"]);
        assert_eq!(code, 0, "{}: {stderr}", f.display());
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let short: String = stem.chars().take_while(|c| *c != '_').collect();
        insta::assert_snapshot!(format!("fixture_{short}"), stdout);
    }
}

#[test]
fn every_fixture_renders_in_both_languages_and_formats() {
    use oomdoc::report::{Ctx, Format, Lang};
    for f in fixtures() {
        let file = std::fs::File::open(&f).expect("open");
        let report = oomdoc::oom::parse_reader(std::io::BufReader::new(file)).expect("parse");
        for lang in [Lang::En, Lang::Zh] {
            for format in [Format::Text, Format::Markdown, Format::Html] {
                let doc = oomdoc::oom::report::document(&report, "log", lang);
                let out = Ctx::new(format, lang).render_doc(&doc);
                assert!(out.len() > 40, "{} {lang:?} {format:?}", f.display());
                for e in &report.events {
                    let line = format!("{}", e.line);
                    assert!(out.contains(&line));
                }
                assert!(
                    !out.contains("{?}"),
                    "unfilled template in {}:\n{out}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn seed_situation_report_en_zh() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "tests/fixtures/oom-logs/48_cuda_oom_torch2.11_navdp_like_fp32_b16_capped_23.55GiB.txt",
    );
    for lang in ["en", "zh"] {
        let (code, stdout, _) = diagnose(&f, &["--lang", lang]);
        assert_eq!(code, 0);
        // the path differs between machines: report it relative to the crate
        let stdout = stdout.replace(env!("CARGO_MANIFEST_DIR"), "");
        insta::assert_snapshot!(format!("seed_48_text_{lang}"), stdout);
    }
    let (_, md, _) = diagnose(&f, &["--lang", "zh", "--format", "markdown"]);
    let md = md.replace(env!("CARGO_MANIFEST_DIR"), "");
    insta::assert_snapshot!("seed_48_markdown_zh", md);
    for heading in [
        "问题分析",
        "当前状态",
        "内存使用分析",
        "解决方案（按优先级排序）",
        "GPU总容量",
        "已使用内存",
        "PyTorch分配",
        "空闲内存",
    ] {
        assert!(md.contains(heading), "{heading}");
    }
}
