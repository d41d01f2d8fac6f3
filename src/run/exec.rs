//! Runs one command under watch: its own process group, output streamed through with a bounded
//! tail kept for diagnosis, OOM lines detected as they pass, GPU memory sampled, signals forwarded,
//! a timeout, and nothing left running afterwards.
use std::collections::VecDeque;
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::detect;
use super::procs;
use crate::error::Error;
use crate::gpu::nvml::Sampler;

/// Lines of output kept for diagnosis, and their byte budget.
const TAIL_LINES: usize = 400;
const TAIL_BYTES: usize = 256 * 1024;
/// Longest line kept whole; longer ones are cut into pieces of this size.
const MAX_LINE: usize = 64 * 1024;
/// Lines kept before and after the first OOM line (a traceback's last frames; the summary after).
const EXCERPT_BEFORE: usize = 20;
const EXCERPT_AFTER: usize = 40;
/// How often the main loop checks the child, signals and the clock.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for the output pipes to close once every process is gone.
const DRAIN_WAIT: Duration = Duration::from_secs(3);

/// Where the child's output goes besides the tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// stdout to stdout, stderr to stderr.
    Passthrough,
    /// Both to our stderr (keeps our stdout for the report).
    Stderr,
    /// Nowhere (only the tail and the log file).
    Quiet,
}

/// What to run and how.
#[derive(Clone, Debug)]
pub struct Spec {
    pub argv: Vec<String>,
    /// Extra environment for the child.
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    /// Time between the polite signal (SIGINT/SIGTERM) and SIGKILL.
    pub grace: Duration,
    pub echo: Echo,
    /// Also write all output here.
    pub log_file: Option<PathBuf>,
    pub sample_interval: Duration,
    /// Become the subreaper of the command's descendants and, once it ends, end every process
    /// reparented to us. Right for the oomdoc binary, whose only children are the command's;
    /// off where other children of this process must be left alone (unit tests).
    pub sweep_orphans: bool,
}

impl Spec {
    pub fn new(argv: Vec<String>) -> Spec {
        Spec {
            argv,
            env: Vec::new(),
            timeout: None,
            // Long enough for a training script to save a checkpoint on KeyboardInterrupt.
            grace: Duration::from_secs(10),
            echo: Echo::Passthrough,
            log_file: None,
            // NVML updates process memory about every 100 ms; 200 ms keeps the overhead negligible.
            sample_interval: Duration::from_millis(200),
            sweep_orphans: true,
        }
    }
}

/// Peak memory of one GPU while the command ran.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GpuPeak {
    pub index: u32,
    pub name: String,
    pub total_bytes: u64,
    /// In use on the device just before the command started.
    pub baseline_used_bytes: u64,
    pub peak_device_used_bytes: u64,
    /// Peak of the command's own processes (NVML per-process figures); absent when none of its
    /// processes showed up (none used this GPU, or PIDs are hidden, e.g. in a container).
    pub peak_process_bytes: Option<u64>,
}

/// GPU memory observed during a run.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct GpuWatch {
    pub devices: Vec<GpuPeak>,
    pub samples: u64,
    /// Why there are no GPU figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// How a run ended.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    /// The signal that ended the command, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// A signal oomdoc received and passed on (Ctrl-C, SIGTERM, SIGHUP).
    pub interrupted_by: Option<i32>,
    pub duration_s: f64,
    /// The first output line that reports an out-of-memory failure.
    pub oom_line: Option<String>,
    /// That line with the lines around it, for a full diagnosis.
    pub oom_excerpt: Option<String>,
    /// Processes still running after the command's main process ended, which oomdoc ended.
    pub leftover_killed: usize,
    pub gpu: GpuWatch,
    /// The last lines of output.
    #[serde(skip)]
    pub tail: String,
}

impl Outcome {
    /// The exit code oomdoc passes on: the child's, 128+n for a signal, 124 for a timeout (as
    /// coreutils' `timeout`).
    pub fn shell_code(&self) -> u8 {
        if self.timed_out {
            return 124;
        }
        match (self.exit_code, self.signal) {
            (Some(c), _) => (c & 0xff) as u8,
            (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
            _ => 1,
        }
    }

    /// Did the command run out of memory (by its output or by how it died)?
    pub fn is_oom(&self) -> bool {
        self.oom_line.is_some() || detect::exit_suggests_oom(self.exit_code, self.signal)
    }

    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

// ---------------------------------------------------------------- signals

static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
}

/// While alive, SIGINT/SIGTERM/SIGHUP are caught (and passed on to the watched command)
/// instead of ending oomdoc; the previous handlers come back on drop.
pub struct SignalGuard {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalGuard {
    pub fn install() -> SignalGuard {
        let mut old = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: sigaction structs are plain data, zero-initialised then filled; the handler
            // only stores into an atomic, which is async-signal-safe.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                sa.sa_flags = libc::SA_RESTART;
                let mut prev: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut prev) == 0 {
                    old.push((sig, prev));
                }
            }
        }
        SignalGuard { old }
    }

    /// A signal received and not yet handled, taken.
    pub fn take_pending() -> Option<i32> {
        match PENDING.swap(0, Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: restores a disposition previously returned by sigaction.
            unsafe {
                libc::sigaction(*sig, prev, std::ptr::null_mut());
            }
        }
    }
}

fn killpg(pgid: i32, sig: i32) {
    // SAFETY: plain system call; errors (ESRCH: group gone) are expected and ignored.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

// ---------------------------------------------------------------- output

#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

#[derive(Default)]
struct OomCapture {
    line: Option<String>,
    excerpt: Vec<String>,
    after_left: usize,
}

struct Shared {
    tail: Mutex<Tail>,
    oom: Mutex<OomCapture>,
    log: Option<Mutex<File>>,
    done: AtomicUsize,
}

impl Shared {
    fn line(&self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw).into_owned();
        let is_oom = detect::line_is_oom(&text);
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut oom = self.oom.lock().unwrap_or_else(|e| e.into_inner());
        if oom.line.is_some() && oom.after_left > 0 {
            oom.excerpt.push(text.clone());
            oom.after_left -= 1;
        } else if oom.line.is_none() && is_oom {
            let start = tail.lines.len().saturating_sub(EXCERPT_BEFORE);
            oom.excerpt = tail.lines.iter().skip(start).cloned().collect();
            oom.excerpt.push(text.clone());
            oom.line = Some(text.trim().to_string());
            oom.after_left = EXCERPT_AFTER;
        }
        tail.bytes += text.len();
        tail.lines.push_back(text);
        while tail.lines.len() > TAIL_LINES || tail.bytes > TAIL_BYTES {
            match tail.lines.pop_front() {
                Some(l) => tail.bytes -= l.len(),
                None => break,
            }
        }
    }
}

fn echo_chunk(echo: Echo, is_err: bool, chunk: &[u8]) -> std::io::Result<()> {
    match (echo, is_err) {
        (Echo::Quiet, _) => Ok(()),
        (Echo::Passthrough, false) => {
            let mut o = std::io::stdout().lock();
            o.write_all(chunk)?;
            o.flush()
        }
        _ => {
            let mut e = std::io::stderr().lock();
            e.write_all(chunk)?;
            e.flush()
        }
    }
}

fn pump(mut src: impl Read, echo: Echo, is_err: bool, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut echo_ok = true;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        // A closed stdout (e.g. `| head`) must not stop the draining: the child would block.
        if echo_ok {
            echo_ok = echo_chunk(echo, is_err, chunk).is_ok();
        }
        if let Some(f) = &shared.log {
            let _ = f.lock().unwrap_or_else(|e| e.into_inner()).write_all(chunk);
        }
        for &b in chunk {
            if b == b'\n' || b == b'\r' {
                if !line.is_empty() {
                    shared.line(&line);
                    line.clear();
                }
            } else {
                if line.len() >= MAX_LINE {
                    shared.line(&line);
                    line.clear();
                }
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        shared.line(&line);
    }
    shared.done.fetch_add(1, Ordering::SeqCst);
}

// ---------------------------------------------------------------- terminal

/// When oomdoc owns the terminal, the command's group gets it for the run (as a shell does for a
/// foreground job), so that it can read from it and Ctrl-C reaches it directly.
fn foreground_tty() -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    // SAFETY: plain queries of the terminal's foreground group and ours.
    unsafe { libc::tcgetpgrp(0) == libc::getpgrp() }
}

fn give_terminal_to(pgid: libc::pid_t) {
    // SAFETY: SIGTTOU is ignored around tcsetpgrp (a background group may otherwise be stopped
    // by it) and restored right after.
    unsafe {
        let prev = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, pgid);
        libc::signal(libc::SIGTTOU, prev);
    }
}

// ---------------------------------------------------------------- run

/// Runs the command to its end. `gpu` is the NVML sampler, or why there is none.
/// Errors only when the command cannot be started (not found, not executable).
pub fn execute(spec: &Spec, gpu: Result<&Sampler, &str>) -> crate::error::Result<Outcome> {
    let Some(program) = spec.argv.first() else {
        return Err(Error::input("no command given (put it after --)"));
    };
    let log = match &spec.log_file {
        Some(p) => Some(Mutex::new(File::create(p).map_err(|e| Error::io(p, e))?)),
        None => None,
    };
    let tty = foreground_tty();
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (setpgid, signal, tcsetpgrp, getpid).
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            if tty {
                let prev = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, prev);
            }
            Ok(())
        });
    }
    if spec.sweep_orphans {
        procs::become_subreaper();
    }

    let mut baseline: Vec<u64> = Vec::new();
    if let Ok(s) = gpu {
        baseline = s
            .sample(&Default::default())
            .iter()
            .map(|d| d.device_used_bytes)
            .collect();
    }

    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::input(format!("command not found: {program}")),
        std::io::ErrorKind::PermissionDenied => {
            Error::input(format!("cannot run {program}: permission denied"))
        }
        _ => Error::input(format!("cannot run {program}: {e}")),
    })?;
    let pid = child.id() as libc::pid_t;
    // Also in the parent, so the group exists before any signal is sent (the classic race).
    // SAFETY: plain system call on our own child.
    unsafe {
        libc::setpgid(pid, pid);
    }
    if tty {
        give_terminal_to(pid);
    }

    let shared = Arc::new(Shared {
        tail: Mutex::new(Tail::default()),
        oom: Mutex::new(OomCapture::default()),
        log,
        done: AtomicUsize::new(0),
    });
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let sh = shared.clone();
        let echo = spec.echo;
        readers.push(std::thread::spawn(move || pump(out, echo, false, sh)));
    }
    if let Some(err) = child.stderr.take() {
        let sh = shared.clone();
        let echo = spec.echo;
        readers.push(std::thread::spawn(move || pump(err, echo, true, sh)));
    }

    let mut watch = GpuWatch::default();
    match gpu {
        Ok(s) => {
            watch.devices = s
                .devices
                .iter()
                .enumerate()
                .map(|(i, (index, name, total))| GpuPeak {
                    index: *index,
                    name: name.clone(),
                    total_bytes: *total,
                    baseline_used_bytes: baseline.get(i).copied().unwrap_or(0),
                    peak_device_used_bytes: 0,
                    peak_process_bytes: None,
                })
                .collect()
        }
        Err(why) => watch.unavailable = Some(why.to_string()),
    }

    let mut timed_out = false;
    let mut interrupted_by = None;
    let mut kill_at: Option<Instant> = None;
    let mut next_sample = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(_) => break None,
        }
        let now = Instant::now();
        if let Some(sig) = SignalGuard::take_pending() {
            if kill_at.is_none() {
                interrupted_by = Some(sig);
                killpg(pid, sig);
                kill_at = Some(now + spec.grace);
            } else {
                // A second signal: no more waiting.
                killpg(pid, libc::SIGKILL);
            }
        }
        if let Some(t) = spec.timeout {
            if !timed_out && now.duration_since(start) >= t {
                timed_out = true;
                killpg(pid, libc::SIGTERM);
                kill_at = Some(now + spec.grace);
            }
        }
        if let Some(k) = kill_at {
            if now >= k {
                killpg(pid, libc::SIGKILL);
            }
        }
        if let Ok(s) = gpu {
            if now >= next_sample {
                next_sample = now + spec.sample_interval;
                let pids = procs::tree(pid as u32, pid as u32);
                record(&mut watch, &s.sample(&pids));
            }
        }
        std::thread::sleep(POLL);
    };
    let duration_s = start.elapsed().as_secs_f64();
    if tty {
        // SAFETY: plain query of our own group.
        give_terminal_to(unsafe { libc::getpgrp() });
    }

    // The main process is gone: end whatever it left behind (its group, and orphans that were
    // reparented to us), so that nothing keeps running and the pipes close.
    let leftover: Vec<u32> = procs::tree(pid as u32, pid as u32)
        .into_iter()
        .filter(|p| *p != pid as u32)
        .collect();
    killpg(pid, libc::SIGKILL);
    let me = std::process::id();
    let mut ended: std::collections::HashSet<u32> = leftover.iter().copied().collect();
    for _ in 0..if spec.sweep_orphans { 50 } else { 0 } {
        procs::reap_zombies();
        let kids = procs::children_of(me);
        if kids.is_empty() {
            break;
        }
        for k in kids {
            ended.insert(k);
            // SAFETY: plain system call on a process reparented to us.
            unsafe {
                libc::kill(k as libc::pid_t, libc::SIGKILL);
            }
        }
        std::thread::sleep(POLL);
    }
    if spec.sweep_orphans {
        procs::reap_zombies();
    }

    let drain_deadline = Instant::now() + DRAIN_WAIT;
    while shared.done.load(Ordering::SeqCst) < readers.len() && Instant::now() < drain_deadline {
        std::thread::sleep(POLL);
    }
    if shared.done.load(Ordering::SeqCst) >= readers.len() {
        for r in readers {
            let _ = r.join();
        }
    }

    let (exit_code, signal) = match status {
        Some(st) => (st.code(), st.signal()),
        None => (None, None),
    };
    let tail = {
        let t = shared.tail.lock().unwrap_or_else(|e| e.into_inner());
        t.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    };
    let (oom_line, oom_excerpt) = {
        let o = shared.oom.lock().unwrap_or_else(|e| e.into_inner());
        (
            o.line.clone(),
            o.line.as_ref().map(|_| o.excerpt.join("\n")),
        )
    };
    Ok(Outcome {
        exit_code,
        signal,
        timed_out,
        interrupted_by,
        duration_s,
        oom_line,
        oom_excerpt,
        leftover_killed: ended.len(),
        gpu: watch,
        tail,
    })
}

fn record(watch: &mut GpuWatch, samples: &[crate::gpu::nvml::DeviceSample]) {
    watch.samples += 1;
    for s in samples {
        if let Some(d) = watch.devices.iter_mut().find(|d| d.index == s.index) {
            d.peak_device_used_bytes = d.peak_device_used_bytes.max(s.device_used_bytes);
            if let Some(p) = s.process_bytes {
                d.peak_process_bytes = Some(d.peak_process_bytes.unwrap_or(0).max(p));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Spec {
        let mut s = Spec::new(vec!["sh".into(), "-c".into(), script.into()]);
        s.echo = Echo::Quiet;
        s.sweep_orphans = false;
        s
    }

    #[test]
    fn exit_code_and_tail() {
        let o = execute(&sh("echo hello; echo oops >&2; exit 3"), Err("none")).unwrap();
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.shell_code(), 3);
        assert!(
            o.tail.contains("hello") && o.tail.contains("oops"),
            "{}",
            o.tail
        );
        assert!(o.oom_line.is_none());
    }

    #[test]
    fn oom_line_and_excerpt() {
        let o = execute(
            &sh("echo step 1; echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.' >&2; echo after; exit 1"),
            Err("none"),
        )
        .unwrap();
        assert!(o.is_oom());
        assert!(o
            .oom_line
            .as_deref()
            .unwrap()
            .starts_with("torch.OutOfMemoryError"));
        let ex = o.oom_excerpt.unwrap();
        assert!(ex.contains("step 1") && ex.contains("after"), "{ex}");
    }

    #[test]
    fn signal_exit_is_128_plus_n() {
        let o = execute(&sh("kill -TERM $$"), Err("none")).unwrap();
        assert_eq!(o.signal, Some(libc::SIGTERM));
        assert_eq!(o.shell_code(), 128 + 15);
    }

    #[test]
    fn missing_command_is_input_error() {
        let s = Spec::new(vec!["/nonexistent/oomdoc-test-cmd".into()]);
        let e = execute(&s, Err("none")).unwrap_err().to_string();
        assert!(e.contains("command not found"), "{e}");
    }
}
