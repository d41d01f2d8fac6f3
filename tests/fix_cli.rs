//! `oomdoc fix` on the fixture projects: the diffs (snapshots), applying them, that the result
//! still parses, that a second run changes nothing, and bad input.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_oomdoc");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fix")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A temporary copy of a fixture project.
fn temp_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    copy_dir(&fixture(name), &p);
    (d, p)
}

fn oomdoc(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LANG", "C")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .arg("fix")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs on the fixture in place with a relative path, so the report is the same everywhere.
fn report(name: &str, args: &[&str]) -> String {
    let rel = PathBuf::from(format!("tests/fixtures/fix/{name}"));
    let o = oomdoc(&rel, args);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    stdout(&o)
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, ext, out);
        } else if p.extension().map(|x| x == ext).unwrap_or(false) {
            out.push(p);
        }
    }
}

/// Every Python file parses without error nodes, and compiles where python3 exists.
fn assert_parses(dir: &Path) {
    let mut files = Vec::new();
    files_under(dir, "py", &mut files);
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        if let Err((line, col)) = oomdoc::fix::py::parse(&src) {
            panic!(
                "{}:{line}:{col}: does not parse after the fix:\n{src}",
                f.display()
            );
        }
    }
    if Command::new("python3").arg("--version").output().is_ok() {
        let o = Command::new("python3")
            .args(["-m", "py_compile"])
            .args(&files)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env(
                "PYTHONPYCACHEPREFIX",
                std::env::temp_dir().join("oomdoc-pycache"),
            )
            .output()
            .unwrap();
        assert!(o.status.success(), "py_compile: {}", stderr(&o));
    } else {
        eprintln!("note: python3 not found; only the tree-sitter parse was checked");
    }
}

/// Applies, checks the backups and the parse, and that a second run has nothing to change.
fn apply_and_check(name: &str, args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let (d, p) = temp_copy(name);
    let mut a = args.to_vec();
    a.push("--apply");
    let o = oomdoc(&p, &a);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Written"), "{out}");
    // Backups hold the originals.
    let json: serde_json::Value = {
        let mut a2 = args.to_vec();
        a2.extend(["--format", "json"]);
        let o = oomdoc(&fixture(name), &a2);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    for f in json["files"].as_array().unwrap() {
        let rel = f["path"].as_str().unwrap();
        let orig = std::fs::read_to_string(fixture(name).join(rel)).unwrap();
        let bak = std::fs::read_to_string(p.join(format!("{rel}.orig"))).unwrap();
        assert_eq!(orig, bak, "{rel}.orig is not the original");
        let now = std::fs::read_to_string(p.join(rel)).unwrap();
        assert_ne!(now, orig, "{rel} was not changed");
    }
    assert_parses(&p);
    // Idempotent: the fixed project needs no further change.
    let mut a3 = args.to_vec();
    a3.extend(["--format", "json"]);
    let o = oomdoc(&p, &a3);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        again["files"].as_array().unwrap().len(),
        0,
        "second run still changes: {}",
        again["files"]
    );
    (d, p)
}

const NAVDP: &[&str] = &[
    "--precision",
    "bf16-mixed",
    "--checkpointing",
    "full",
    "--batch",
    "8",
    "--grad-accum",
    "2",
    "--attention",
    "sdpa",
    "--optimizer",
    "adamw-fused",
    "--num-workers",
    "4",
    "--pin-memory",
    "false",
    "--alloc-conf",
    "expandable_segments:True",
    "--gpu",
    "rtx3090",
];

const LIGHTNING: &[&str] = &[
    "--precision",
    "bf16-mixed",
    "--batch",
    "16",
    "--grad-accum",
    "4",
    "--checkpointing",
    "full",
    "--attention",
    "sdpa",
    "--optimizer",
    "adamw-8bit",
    "--num-workers",
    "8",
    "--persistent-workers",
    "true",
    "--gpu",
    "a100-80",
];

const PLAIN: &[&str] = &[
    "--precision",
    "bf16-mixed",
    "--batch",
    "16",
    "--grad-accum",
    "2",
    "--checkpointing",
    "full",
    "--attention",
    "sdpa",
    "--gpu",
    "h100-sxm",
];

#[test]
fn navdp_diff() {
    let out = report("navdp", NAVDP);
    // The traps: the batch goes to the config module, pin_memory to the custom DataLoader,
    // the optimizer to create_optimizer, checkpointing into the model, not TrainingArguments.
    assert!(
        out.contains("-        batch_size=16,  # per GPU\n    +        batch_size=8,  # per GPU"),
        "{out}"
    );
    assert!(out.contains("+            pin_memory=False,"), "{out}");
    assert!(
        out.contains("torch.optim.AdamW(params, lr=config.il.lr, weight_decay=0.0, fused=True)")
    );
    assert!(!out.contains("+        gradient_checkpointing=True"));
    assert!(out.contains("does not declare supports_gradient_checkpointing"));
    assert!(out.contains("Installing xformers"));
    insta::assert_snapshot!("navdp_diff", out);
}

#[test]
fn navdp_selective_and_t4() {
    let out = report(
        "navdp",
        &[
            "--checkpointing",
            "selective",
            "--checkpoint-modules",
            "rgb_model.blocks",
            "--precision",
            "bf16-mixed",
            "--gpu",
            "t4",
        ],
    );
    assert!(
        out.contains("DinoVisionTransformer is also used as depth_model"),
        "{out}"
    );
    assert!(out.contains("+        fp16=True,"), "{out}");
    assert!(out.contains("NVIDIA Tesla T4 has no native bf16"), "{out}");
    assert!(
        !out.contains("navdp_policy.py\n---"),
        "decoder must not be checkpointed: {out}"
    );
    insta::assert_snapshot!("navdp_selective_t4", out);
}

#[test]
fn lightning_diff() {
    let out = report("lightning", LIGHTNING);
    assert!(out.contains("+  batch_size: 16   # per device"), "{out}");
    assert!(out.contains("+        precision=\"bf16-mixed\","), "{out}");
    assert!(out.contains("+        accumulate_grad_batches=4,"), "{out}");
    assert!(
        out.contains("attn_mask=~(mask[:, None, None, :] == 0)"),
        "{out}"
    );
    insta::assert_snapshot!("lightning_diff", out);
}

#[test]
fn plain_diff() {
    let out = report("plain", PLAIN);
    assert!(
        out.contains("with torch.autocast(device_type=device.type, dtype=torch.bfloat16):"),
        "{out}"
    );
    assert!(
        out.contains("if (micro_step + 1) % grad_accum_steps == 0:"),
        "{out}"
    );
    insta::assert_snapshot!("plain_diff", out);
}

#[test]
fn plain_fp16_on_t4() {
    let out = report("plain", &["--precision", "bf16-mixed", "--gpu", "t4"]);
    assert!(
        out.contains("scaler = torch.amp.GradScaler(device.type)"),
        "{out}"
    );
    assert!(out.contains("scaler.unscale_(optimizer)"), "{out}");
    assert!(
        out.contains("scaler.step(optimizer)\n    +            scaler.update()"),
        "{out}"
    );
    insta::assert_snapshot!("plain_fp16_t4", out);
}

#[test]
fn patch_output_is_a_plain_unified_diff() {
    let out = report("plain", &["--batch", "8", "--patch"]);
    assert!(
        out.starts_with("--- a/train.py\n+++ b/train.py\n@@ "),
        "{out}"
    );
    assert!(out.contains("-    p.add_argument(\"--batch-size\", type=int, default=32)\n+    p.add_argument(\"--batch-size\", type=int, default=8)"));
}

#[test]
fn json_and_chinese_output() {
    let o = oomdoc(&fixture("navdp"), &["--batch", "8", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["frameworks"][0], "hf-trainer");
    let f = &v["files"][0];
    assert_eq!(f["path"], "navdp_configs.py");
    let c = &f["hunks"][0]["changes"][0];
    assert_eq!(c["knob"], "batch");
    assert!(c["why"]["text"]
        .as_str()
        .unwrap()
        .contains("NavDPTrainer.get_train_dataloader"));
    assert!(f["diff"]
        .as_str()
        .unwrap()
        .contains("+        batch_size=8,"));
    let o = oomdoc(&fixture("navdp"), &["--batch", "8", "--lang", "zh"]);
    let out = stdout(&o);
    assert!(out.contains("不起作用"), "{out}");
}

#[test]
fn apply_navdp() {
    apply_and_check("navdp", NAVDP);
}

#[test]
fn apply_lightning() {
    apply_and_check("lightning", LIGHTNING);
}

#[test]
fn apply_plain() {
    apply_and_check("plain", PLAIN);
    apply_and_check(
        "plain",
        &[
            "--precision",
            "fp16-mixed",
            "--grad-accum",
            "4",
            "--optimizer",
            "sgd-momentum",
        ],
    );
}

#[test]
fn no_training_code() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("utils.py"),
        "def add(a, b):\n    return a + b\n",
    )
    .unwrap();
    let o = oomdoc(d.path(), &["--batch", "8"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("no training code found")
            && e.contains("TrainingArguments")
            && e.contains("loss.backward()"),
        "{e}"
    );
}

#[test]
fn syntax_error_names_file_and_line_and_writes_nothing() {
    let (_d, p) = temp_copy("plain");
    std::fs::write(p.join("broken.py"), "import torch\n\ndef f(:\n    pass\n").unwrap();
    let before = std::fs::read_to_string(p.join("train.py")).unwrap();
    let o = oomdoc(&p, &["--batch", "8", "--apply"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("broken.py:3:") && e.contains("syntax error"),
        "{e}"
    );
    assert_eq!(before, std::fs::read_to_string(p.join("train.py")).unwrap());
    assert!(!p.join("train.py.orig").exists());
}

#[test]
fn read_only_file_refused() {
    let (_d, p) = temp_copy("plain");
    let f = p.join("train.py");
    let mut perms = std::fs::metadata(&f).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&f, perms).unwrap();
    let o = oomdoc(&p, &["--batch", "8", "--attention", "sdpa", "--apply"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("train.py: the file is read-only"),
        "{}",
        stderr(&o)
    );
    // Nothing written anywhere (model.py would have changed too).
    assert_eq!(
        std::fs::read_to_string(p.join("model.py")).unwrap(),
        std::fs::read_to_string(fixture("plain").join("model.py")).unwrap()
    );
    assert!(!p.join("model.py.orig").exists());
}

#[test]
fn git_uncommitted_changes_refused_unless_forced() {
    if Command::new("git").arg("--version").output().is_err() {
        eprintln!("note: git not found; skipped");
        return;
    }
    let (_d, p) = temp_copy("plain");
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(&p)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "init"]);
    let f = p.join("train.py");
    let src = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        src.replace("\"\"\"Train TinyViT", "\"\"\"Train the TinyViT"),
    )
    .unwrap();
    let o = oomdoc(&p, &["--batch", "8", "--apply"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("uncommitted changes in train.py"),
        "{}",
        stderr(&o)
    );
    assert!(!p.join("train.py.orig").exists());
    let o = oomdoc(&p, &["--batch", "8", "--apply", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&f).unwrap().contains("default=8)"));
}

#[test]
fn bad_flags() {
    let o = oomdoc(&fixture("plain"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nothing to change"));
    let o = oomdoc(&fixture("plain"), &["--batch", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = oomdoc(&fixture("plain"), &["--batch", "8", "--gpu", "nosuchgpu"]);
    assert_eq!(o.status.code(), Some(2));
    let o = oomdoc(&fixture("plain"), &["--batch", "8", "--seq-len", "512"]);
    assert_eq!(o.status.code(), Some(2));
    let o = oomdoc(Path::new("/nonexistent/project"), &["--batch", "8"]);
    assert_eq!(o.status.code(), Some(2));
}

/// The interpreter named by OOMDOC_PYTHON, when it can import torch.
fn torch_python() -> Option<String> {
    let py = std::env::var("OOMDOC_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())?;
    let ok = Command::new(&py)
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(py)
}

#[test]
fn plain_fixed_project_trains_one_step_on_cpu() {
    let Some(py) = torch_python() else {
        eprintln!(
            "note: OOMDOC_PYTHON is not set to a Python with torch; CPU training step skipped"
        );
        return;
    };
    let (_d, p) = apply_and_check("plain", PLAIN);
    // Two micro-batches = one optimizer step with accumulation 2.
    let o = Command::new(&py)
        .current_dir(&p)
        .args(["train.py", "--steps", "2"])
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "training failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).contains("done: 2 steps"), "{}", stdout(&o));
}

/// The rewritten attention computes what the eager one did (eval mode, fp32), for both
/// fixture models, in one Python process (importing torch is the slow part).
#[test]
fn rewritten_attention_matches_eager() {
    let Some(py) = torch_python() else {
        eprintln!(
            "note: OOMDOC_PYTHON is not set to a Python with torch; attention equivalence skipped"
        );
        return;
    };
    let (_d1, plain) = temp_copy("plain");
    let (_d2, light) = temp_copy("lightning");
    for p in [&plain, &light] {
        let o = oomdoc(
            p,
            &["--attention", "sdpa", "--checkpointing", "full", "--apply"],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let script = r#"
import importlib.util, sys, torch

def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

cases = [
    ("plain", lambda m: m.TinyViT(), lambda: (torch.randn(4, 3, 32, 32),)),
    ("lightning", lambda m: m.Encoder(100, 32, 2, 4, 2), lambda: (torch.randint(0, 100, (3, 10)), torch.tensor([[1] * 7 + [0] * 3] * 3))),
]
for (name, make, inputs), (orig, fixed) in zip(cases, [sys.argv[1:3], sys.argv[3:5]]):
    a, b = load(orig, name + "_orig"), load(fixed, name + "_fixed")
    assert "scaled_dot_product_attention" in open(fixed).read()
    torch.manual_seed(0)
    m1 = make(a).eval()
    m2 = make(b).eval()
    m2.load_state_dict(m1.state_dict())
    x = inputs()
    with torch.no_grad():
        err = (m1(*x) - m2(*x)).abs().max().item()
    print(name, "max abs diff", err)
    assert err < 1e-5, (name, err)
"#;
    let o = Command::new(&py)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("OMP_NUM_THREADS", "1")
        .arg("-c")
        .arg(script)
        .arg(fixture("plain").join("model.py"))
        .arg(plain.join("model.py"))
        .arg(fixture("lightning").join("model.py"))
        .arg(light.join("model.py"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
}
