//! `oomdoc run`: exit codes, OOM diagnosis, signals, timeout, no orphans, the snapshot hook.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run")
}

fn trainer() -> String {
    fixtures().join("fake_trainer.py").display().to_string()
}

fn oomdoc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oomdoc"));
    c.env("LANG", "C");
    c
}

fn run(args: &[&str]) -> Output {
    oomdoc().args(args).output().expect("run oomdoc")
}

/// Waits until a process is gone (reaped, or a zombie of an exited parent).
fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let alive = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => !s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
            Err(_) => false,
        };
        if !alive {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pids(path: &Path) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            let v: Vec<u32> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if !v.is_empty() && s.ends_with('\n') {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no pid file {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn passes_exit_code_and_output_through() {
    let out = run(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert_eq!(so, "to-stdout\n", "the command's stdout stays clean");
    assert!(se.contains("to-stderr"));
    assert!(se.contains("exit code 7"), "{se}");
}

#[test]
fn signal_death_is_128_plus_n() {
    let out = run(&["run", "--quiet", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    // SIGKILL (the kernel OOM killer's signal) is diagnosed as host memory.
    let out = run(&["run", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(137));
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(se.contains("OOM killer"), "{se}");
}

#[test]
fn oom_is_diagnosed_with_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let log = dir.path().join("train.log");
    let out = oomdoc()
        .args(["run", "--format", "json", "-o"])
        .arg(&report)
        .arg("--log")
        .arg(&log)
        .args(["--", "python3", "-S", &trainer(), "--batch-size", "32"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["oomdoc_exit_code"], 1);
    let line = v["oom_line"].as_str().unwrap();
    assert!(
        line.starts_with("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"),
        "{line}"
    );
    assert!(v["oom_excerpt"]
        .as_str()
        .unwrap()
        .contains("loss = model(batch)"));
    assert!(v["gpu"].is_object());
    // The diagnose parser read the message: one CUDA OOM event with its sizes.
    assert_eq!(v["events"].as_array().unwrap().len(), 1, "{}", v["events"]);
    assert_eq!(v["events"][0]["kind"], "cuda_oom");
    assert!(v["events"][0]["requested_bytes"].as_u64().unwrap() > 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("config: batch 32") && logged.contains("23.55 GiB allowed"));
    // Text report names the line and the next step.
    let out = run(&[
        "run",
        "--",
        "python3",
        "-S",
        &trainer(),
        "--batch-size",
        "32",
    ]);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        se.contains("Out of memory") && se.contains("oomdoc fit"),
        "{se}"
    );
    // Chinese.
    let out = run(&[
        "run",
        "--lang",
        "zh",
        "--",
        "python3",
        "-S",
        &trainer(),
        "--batch-size",
        "32",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("下一步"));
}

#[test]
fn success_passes_zero() {
    let out = run(&[
        "run",
        "--quiet",
        "--",
        "python3",
        "-S",
        &trainer(),
        "--batch-size",
        "4",
        "--max-steps",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("step 2/2"));
    assert!(out.stderr.is_empty(), "--quiet prints nothing on success");
}

#[test]
fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("sleep 300 & echo $$ $! > {}; wait", pids.display());
    let t = Instant::now();
    let out = run(&[
        "run",
        "--timeout",
        "0.5",
        "--grace",
        "1",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.status.code(), Some(124));
    assert!(t.elapsed() < Duration::from_secs(5));
    for pid in read_pids(&pids) {
        assert!(gone(pid), "process {pid} survived");
    }
}

#[test]
fn no_orphans_even_outside_the_group() {
    // The child starts a grandchild in its own session (leaves the process group) and exits.
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let py = format!(
        "import subprocess,sys\np=subprocess.Popen(['sleep','300'],start_new_session=True)\nq=subprocess.Popen(['sleep','300'])\nopen({:?},'w').write('%d %d\\n'%(p.pid,q.pid))\n",
        pids.display().to_string()
    );
    let out = run(&["run", "--", "python3", "-c", &py]);
    assert_eq!(out.status.code(), Some(0));
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(se.contains("leftover processes ended: 2"), "{se}");
    for pid in read_pids(&pids) {
        assert!(gone(pid), "process {pid} survived");
    }
}

#[test]
fn sigint_is_forwarded_and_group_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("sleep 300 & echo $$ $! > {}; wait", pids.display());
    let child = oomdoc()
        .args(["run", "--grace", "1", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ps = read_pids(&pids);
    // SAFETY: sending SIGINT to the oomdoc process this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    // sh dies of the forwarded SIGINT: 128 + 2.
    assert_eq!(out.status.code(), Some(130));
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(se.contains("SIGINT"), "{se}");
    for pid in ps {
        assert!(gone(pid), "process {pid} survived");
    }
}

#[test]
fn bad_input_is_exit_2() {
    let out = run(&["run", "--", "/no/such/command-oomdoc"]);
    assert_eq!(out.status.code(), Some(2));
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        se.contains("command not found: /no/such/command-oomdoc"),
        "{se}"
    );
    assert_eq!(se.lines().count(), 1, "{se}");
    let out = run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["run", "--timeout", "-3", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn snapshot_hook_writes_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("snaps");
    let report = dir.path().join("r.json");
    let out = oomdoc()
        .env("PYTHONPATH", fixtures().join("fake_torch"))
        .args(["run", "--snapshot-on-oom", "--snapshot-dir"])
        .arg(&snaps)
        .args(["--format", "json", "-o"])
        .arg(&report)
        .args(["--", "python3", "-c", "import torch; torch._fake_oom()"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let snaps_list = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps_list.len(), 1, "{v}");
    let path = snaps_list[0].as_str().unwrap();
    assert!(Path::new(path).exists());
    assert!(v["oom_line"]
        .as_str()
        .unwrap()
        .starts_with("torch.OutOfMemoryError"));
    // The hook recorded the history before the OOM (the fake torch keeps the arguments).
    let check = Command::new("python3")
        .args(["-c", "import pickle,sys; d=pickle.load(open(sys.argv[1],'rb')); assert d['fake_history']['enabled'] and d['device_traces'][0][0]['action']=='oom', d", path])
        .status()
        .unwrap();
    assert!(check.success());
    // Without torch imported, the hook stays silent and the program runs normally.
    let out = oomdoc()
        .args(["run", "--quiet", "--snapshot-on-oom", "--snapshot-dir"])
        .arg(&snaps)
        .args(["--", "python3", "-c", "print('plain')"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n");
}

#[test]
fn command_dies_with_oomdoc() {
    // oomdoc killed outright (SIGKILL, no chance to clean up): its command does not run on.
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("echo $$ > {}; exec sleep 300", pids.display());
    let mut child = oomdoc()
        .args(["run", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ps = read_pids(&pids);
    child.kill().unwrap();
    child.wait().unwrap();
    for pid in ps {
        assert!(gone(pid), "process {pid} survived its oomdoc");
    }
}
