//! `oomdoc run -- CMD ...`: runs a training command under watch.
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::gpu::nvml::Sampler;
use crate::report::{Ctx, Format};
use crate::run::exec::{self, Echo, SignalGuard, Spec};
use crate::run::hook::{self, Hook};
use crate::run::report::{self, RunReport};

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "The command's output passes through unchanged; oomdoc's report goes to stderr (or to -o FILE).\nExit code: the command's own; 128+n when a signal ended it; 124 after --timeout."
)]
pub struct Args {
    /// Make a PyTorch program write a memory snapshot when it runs out of memory (a Python hook
    /// injected through PYTHONPATH; the program itself is not changed).
    #[arg(long)]
    pub snapshot_on_oom: bool,
    /// Where --snapshot-on-oom writes `oomdoc-oom-<pid>.pickle`.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub snapshot_dir: PathBuf,
    /// Allocation events kept for the snapshot's history.
    #[arg(long, value_name = "N", default_value_t = hook::DEFAULT_MAX_ENTRIES)]
    pub snapshot_max_entries: u64,
    /// Stop the command (the whole process group) after this many seconds.
    #[arg(long, value_name = "S")]
    pub timeout: Option<f64>,
    /// Seconds between the polite signal (Ctrl-C, timeout) and SIGKILL.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub grace: f64,
    /// Also write the command's whole output to this file (for `oomdoc diagnose`).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// GPU memory sampling interval in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub sample_ms: u64,
    /// Print nothing of oomdoc's own unless the command runs out of memory.
    #[arg(long)]
    pub quiet: bool,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub(crate) fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    if !(0.0..=1e9).contains(&s) {
        anyhow::bail!("{flag} {s}: expected a number of seconds >= 0");
    }
    Ok(Duration::from_secs_f64(s))
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let mut spec = Spec::new(args.command.clone());
    spec.timeout = args.timeout.map(|t| seconds("--timeout", t)).transpose()?;
    spec.grace = seconds("--grace", args.grace)?;
    spec.echo = Echo::Passthrough;
    spec.log_file = args.log.clone();
    spec.sample_interval = Duration::from_millis(args.sample_ms.max(10));
    let hook = if args.snapshot_on_oom {
        let h = Hook::install(&args.snapshot_dir)?;
        spec.env.extend(h.env(args.snapshot_max_entries));
        Some(h)
    } else {
        None
    };
    let sampler = Sampler::open();
    let gpu = match &sampler {
        Ok(s) => Ok(s),
        Err(e) => Err(e.as_str()),
    };
    let guard = SignalGuard::install();
    let outcome = exec::execute(&spec, gpu)?;
    drop(guard);
    let code = outcome.shell_code();
    let snapshots = hook
        .as_ref()
        .map(|h| {
            h.new_snapshots()
                .into_iter()
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    // The full diagnosis of the lines around the OOM, with the log parser of `diagnose`.
    let events = outcome
        .oom_excerpt
        .as_deref()
        .map(crate::oom::parse_str)
        .unwrap_or_default();
    let r = RunReport {
        command: args.command.clone(),
        oomdoc_exit_code: code,
        events,
        outcome,
        snapshot_on_oom: args.snapshot_on_oom,
        snapshots,
        log_file: args.log.as_ref().map(|p| p.display().to_string()),
    };
    if args.quiet && !r.outcome.is_oom() && ctx.output.is_none() {
        return Ok(code);
    }
    if ctx.output.is_some() {
        ctx.emit(&r, |lang| report::run_doc(&r, args.timeout, lang))?;
    } else {
        // stdout belongs to the command; the report goes to stderr.
        let text = match ctx.format {
            Format::Json => format!("{}\n", serde_json::to_string_pretty(&r)?),
            _ => ctx.render_doc(&report::run_doc(&r, args.timeout, ctx.lang)),
        };
        let mut e = std::io::stderr().lock();
        let _ = e
            .write_all(b"\n")
            .and_then(|_| e.write_all(text.as_bytes()));
    }
    Ok(code)
}
