//! `oomdoc fit -- CMD ... {batch} ...`: the largest micro-batch that runs, by real trials.
use std::io::Write;

use crate::gpu::nvml::Sampler;
use crate::report::{fill, Ctx};
use crate::run::exec::{Echo, SignalGuard};
use crate::run::fit::{self, FitConfig, Stop, Template, Trial};
use crate::run::report;

use super::run::seconds;

crate::catalogue! {
    enum P {
        Start => ("oomdoc fit: trial {0}: micro-batch {1}, accumulation {2} ...", "oomdoc fit：第 {0} 次试运行：微批量 {1}，梯度累积 {2} ……"),
        Done => ("oomdoc fit: trial {0}: micro-batch {1}: {2} ({3} s{4})", "oomdoc fit：第 {0} 次试运行：微批量 {1}：{2}（{3} 秒{4}）"),
        Peak => (", peak {}", "，峰值 {}"),
    }
}

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Placeholders in the command: {batch} (required) is the micro-batch size, {accum} the gradient-accumulation steps, {steps} the number of steps per trial.\nExample: oomdoc fit --effective-batch 64 -- python train.py --batch-size {batch} --grad-accum {accum} --max-steps {steps}\nThe report goes to stdout, trial progress to stderr. Exit code: 0 when a size was found; 1 when nothing fits; the command's own code when it fails for another reason."
)]
pub struct Args {
    /// Smallest micro-batch to consider.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_batch: u64,
    /// Largest micro-batch to consider (default: the effective batch when given, else 4096).
    #[arg(long, value_name = "N")]
    pub max_batch: Option<u64>,
    /// First micro-batch to try (e.g. from `oomdoc estimate`); default --min-batch.
    #[arg(long, value_name = "N")]
    pub start_batch: Option<u64>,
    /// Try only multiples of this size (e.g. 8 for tensor-core friendly shapes).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub multiple_of: u64,
    /// Keep this effective batch (micro-batch x accumulation); needs {accum} in the command.
    #[arg(long, value_name = "N")]
    pub effective_batch: Option<u64>,
    /// Steps each trial runs ({steps}); the memory peak is normally reached by the second step,
    /// once the optimizer state exists.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub steps: u64,
    /// Value of {steps} in the final command (default: left as {steps}).
    #[arg(long, value_name = "N")]
    pub final_steps: Option<u64>,
    /// At most this many trials.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_trials: usize,
    /// Time budget in seconds for all trials together.
    #[arg(long, value_name = "S")]
    pub time_limit: Option<f64>,
    /// Time limit in seconds for one trial.
    #[arg(long, value_name = "S")]
    pub trial_timeout: Option<f64>,
    /// Seconds between the polite signal and SIGKILL when a trial is stopped.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub grace: f64,
    /// Show the trials' output (on stderr).
    #[arg(long)]
    pub show_output: bool,
    /// Start from the largest micro-batch the memory estimate of this model fits (preset:NAME,
    /// hf:config.json, ...): with --gpu/--gpu-memory and the knob flags of `estimate`.
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub knobs: Box<crate::knobs::KnobArgs>,
    #[command(flatten)]
    pub gpu: Box<crate::gpu::GpuArgs>,
    /// The training command with placeholders (after --).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The largest micro-batch (up to `max`) whose estimated device memory fits the target GPU:
/// the trials then start next to the answer instead of at 1.
pub fn start_from_estimate(args: &Args, max: u64) -> anyhow::Result<Option<u64>> {
    let Some(model) = &args.model else {
        return Ok(None);
    };
    let gpu = args.gpu.resolve()?.ok_or_else(|| {
        anyhow::anyhow!("fit --model needs the target GPU: --gpu NAME or --gpu-memory SIZE")
    })?;
    let w = crate::model::resolve(model, std::path::Path::new("."), &args.knobs)?;
    let mut k = w.resolve_knobs(&args.knobs)?;
    k.grad_accum = 1;
    let fits = |b: u64, k: &mut crate::knobs::Knobs| -> anyhow::Result<bool> {
        k.batch = b;
        Ok(crate::memory::estimate_fast(&w, k, Some(&gpu))?.device_total_bytes <= gpu.memory_bytes)
    };
    if !fits(1, &mut k)? {
        return Ok(Some(1));
    }
    let (mut lo, mut hi) = (1u64, max.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid, &mut k)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(Some(lo))
}

/// Default upper bound when no effective batch bounds the search: far above any micro-batch that
/// fits a single GPU for real models, and reached in 12 doublings from 1.
const DEFAULT_MAX_BATCH: u64 = 4096;

/// Upper bound for --effective-batch (2^32 samples per optimizer step).
const MAX_EFFECTIVE: u64 = 1 << 32;

pub fn config(args: &Args) -> anyhow::Result<FitConfig> {
    if args.steps == 0 {
        anyhow::bail!("--steps 0: each trial must run at least one step");
    }
    if args.max_trials == 0 {
        anyhow::bail!("--max-trials 0: at least one trial is needed");
    }
    if args.multiple_of == 0 {
        anyhow::bail!("--multiple-of 0: expected a size >= 1");
    }
    match args.effective_batch {
        Some(0) => anyhow::bail!("--effective-batch 0: expected a batch size >= 1"),
        // Far beyond any real batch; keeps the divisor search instant.
        Some(e) if e > MAX_EFFECTIVE => {
            anyhow::bail!("--effective-batch {e}: too large (at most {MAX_EFFECTIVE})")
        }
        _ => {}
    }
    Ok(FitConfig {
        min_batch: args.min_batch,
        max_batch: args
            .max_batch
            .or(args.effective_batch)
            .unwrap_or(DEFAULT_MAX_BATCH),
        start_batch: args.start_batch,
        multiple_of: args.multiple_of,
        effective_batch: args.effective_batch,
        steps: args.steps,
        max_trials: args.max_trials,
        time_limit: args
            .time_limit
            .map(|t| seconds("--time-limit", t))
            .transpose()?,
        trial_timeout: args
            .trial_timeout
            .map(|t| seconds("--trial-timeout", t))
            .transpose()?,
    })
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let template = Template::parse(&args.command)?;
    let mut cfg = config(args)?;
    if cfg.start_batch.is_none() {
        cfg.start_batch = start_from_estimate(args, cfg.max_batch)?
            .map(|b| b.clamp(cfg.min_batch, cfg.max_batch));
    }
    let sampler = Sampler::open();
    let gpu = match &sampler {
        Ok(s) => Ok(s),
        Err(e) => Err(e.as_str()),
    };
    let lang = ctx.lang;
    let mut on_start = |n: usize, b: u64, a: u64| {
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}",
            fill(P::Start.text(lang), &[&n, &b, &a])
        );
    };
    let mut on_trial = |n: usize, t: &Trial| {
        let peak = t
            .peak_gpu_bytes
            .map(|p| fill(P::Peak.text(lang), &[&crate::report::units::gib(p)]))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}",
            fill(
                P::Done.text(lang),
                &[
                    &n,
                    &t.batch,
                    &report::trial_result(t.result, t.exit_code, lang),
                    &format!("{:.1}", t.duration_s),
                    &peak,
                ],
            )
        );
    };
    let guard = SignalGuard::install();
    let r = fit::fit(
        &template,
        &cfg,
        fit::Runner {
            echo: if args.show_output {
                Echo::Stderr
            } else {
                Echo::Quiet
            },
            sampler: gpu,
            grace: seconds("--grace", args.grace)?,
            on_trial: &mut on_trial,
            on_start: &mut on_start,
            final_steps: args.final_steps,
        },
    )?;
    drop(guard);
    ctx.emit(&r, |lang| report::fit_doc(&r, lang))?;
    Ok(match (r.best, r.stop) {
        (_, Stop::Interrupted) => 130,
        (_, Stop::CommandFailed) => r
            .trials
            .last()
            .map(|t| t.exit_code)
            .filter(|c| *c != 0)
            .unwrap_or(1),
        (Some(_), _) => 0,
        (None, _) => 1,
    })
}
