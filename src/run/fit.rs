//! `fit`: the largest micro-batch that runs, found by real trials. Exponential growth from the
//! start size until a trial runs out of memory (or shrinking while it does), then binary search
//! between the largest size that completed and the smallest that did not. A size is reported only
//! if a trial at that size completed its steps (exit 0, no out-of-memory line in its output).
use std::time::{Duration, Instant};

use serde::Serialize;

use super::exec::{self, Echo, Outcome, Spec};
use crate::error::{Error, Result};
use crate::gpu::nvml::Sampler;

pub const BATCH: &str = "{batch}";
pub const ACCUM: &str = "{accum}";
pub const STEPS: &str = "{steps}";

/// A command with placeholders.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Template {
    pub argv: Vec<String>,
    pub has_accum: bool,
    pub has_steps: bool,
}

impl Template {
    /// Checks the placeholders: `{batch}` is required.
    pub fn parse(argv: &[String]) -> Result<Template> {
        if argv.is_empty() {
            return Err(Error::input(
                "no command given: put the training command after --, with {batch} where the micro-batch size goes",
            ));
        }
        let has = |p: &str| argv.iter().any(|a| a.contains(p));
        if !has(BATCH) {
            return Err(Error::input(format!(
                "the command has no {BATCH} placeholder: write it where the micro-batch size goes, e.g. -- python train.py --batch-size {BATCH} --grad-accum {ACCUM} --max-steps {STEPS}"
            )));
        }
        Ok(Template {
            argv: argv.to_vec(),
            has_accum: has(ACCUM),
            has_steps: has(STEPS),
        })
    }

    /// The command with the placeholders filled; `steps` None leaves `{steps}` as it is.
    pub fn render(&self, batch: u64, accum: u64, steps: Option<u64>) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| {
                let mut s = a
                    .replace(BATCH, &batch.to_string())
                    .replace(ACCUM, &accum.to_string());
                if let Some(n) = steps {
                    s = s.replace(STEPS, &n.to_string());
                }
                s
            })
            .collect()
    }
}

/// Search settings.
#[derive(Clone, Debug, Serialize)]
pub struct FitConfig {
    pub min_batch: u64,
    pub max_batch: u64,
    /// First size tried (e.g. from the estimate); default `min_batch`.
    pub start_batch: Option<u64>,
    pub effective_batch: Option<u64>,
    pub steps: u64,
    pub max_trials: usize,
    /// Budget for all trials together.
    pub time_limit: Option<Duration>,
    /// Limit for one trial.
    pub trial_timeout: Option<Duration>,
}

/// How one trial ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TrialResult {
    /// Completed its steps.
    Fits,
    OutOfMemory,
    /// Failed for another reason: the search cannot go on.
    Failed,
    TimedOut,
    Interrupted,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Trial {
    pub batch: u64,
    pub accum: u64,
    pub result: TrialResult,
    pub exit_code: u8,
    pub duration_s: f64,
    /// Peak GPU memory of the command's processes (or of the device, above its baseline).
    pub peak_gpu_bytes: Option<u64>,
    pub oom_line: Option<String>,
    /// Why a failed trial failed: the last lines of its output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
}

/// Why the search ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The boundary was found to the nearest size (or the maximum fits, or the minimum does not).
    Complete,
    TrialLimit,
    TimeLimit,
    CommandFailed,
    Interrupted,
}

/// A micro-batch with its accumulation.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Choice {
    pub batch: u64,
    pub accum: u64,
    /// batch x accum
    pub effective_batch: u64,
}

/// The learning-rate consequence when the effective batch cannot be kept exactly.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct LrNote {
    pub wanted_effective_batch: u64,
    pub effective_batch: u64,
    /// Linear scaling rule (Goyal et al. 2017): learning rate x (new / old).
    pub linear_scale: f64,
    /// Square-root rule, often used with Adam-type optimizers.
    pub sqrt_scale: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FitReport {
    pub template: Vec<String>,
    pub config: FitConfig,
    pub trials: Vec<Trial>,
    pub stop: Stop,
    /// Largest micro-batch that completed.
    pub largest_fitting: Option<u64>,
    /// Smallest micro-batch that ran out of memory.
    pub smallest_failing: Option<u64>,
    /// What to use: keeps the effective batch exactly where a completed size allows it.
    pub best: Option<Choice>,
    /// The largest completed size when it differs from `best` (faster, but changes the effective batch).
    pub alternative: Option<Choice>,
    pub lr_note: Option<LrNote>,
    /// `best` as a command line (`{steps}` left for the real run's length unless `--final-steps`).
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_unavailable: Option<String>,
    pub total_duration_s: f64,
}

/// Accumulation steps for a micro-batch: the exact quotient when it divides, else rounded up
/// (so the effective batch is at least the one wanted).
pub fn accum_for(batch: u64, effective: Option<u64>) -> u64 {
    match effective {
        Some(e) if batch > 0 => e.div_ceil(batch).max(1),
        _ => 1,
    }
}

/// The outcome of one probe, as the search sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fits,
    Oom,
    Stop(Stop),
}

/// The search over micro-batch sizes. `limits` is asked before each trial (None: go on).
/// Returns (largest fitting, smallest failing, why it stopped).
pub fn search(
    min: u64,
    max: u64,
    start: u64,
    mut limits: impl FnMut() -> Option<Stop>,
    mut trial: impl FnMut(u64) -> Verdict,
) -> (Option<u64>, Option<u64>, Stop) {
    let min = min.max(1);
    let max = max.max(min);
    let mut next = start.clamp(min, max);
    let (mut lo, mut hi): (Option<u64>, Option<u64>) = (None, None);
    loop {
        match (lo, hi) {
            (Some(l), _) if l >= max => return (lo, hi, Stop::Complete),
            (None, Some(h)) if h <= min => return (lo, hi, Stop::Complete),
            (Some(l), Some(h)) if h <= l + 1 => return (lo, hi, Stop::Complete),
            _ => {}
        }
        if let Some(stop) = limits() {
            return (lo, hi, stop);
        }
        match trial(next) {
            Verdict::Fits => lo = Some(next),
            Verdict::Oom => hi = Some(next),
            Verdict::Stop(s) => return (lo, hi, s),
        }
        next = match (lo, hi) {
            (Some(l), Some(h)) => l + (h - l) / 2,
            (Some(l), None) => l.saturating_mul(2).min(max),
            (None, Some(h)) => (h / 2).max(min),
            (None, None) => min,
        };
    }
}

/// Classifies a finished trial.
pub fn verdict(o: &Outcome) -> (TrialResult, Verdict) {
    if o.interrupted_by.is_some() {
        (TrialResult::Interrupted, Verdict::Stop(Stop::Interrupted))
    } else if o.timed_out {
        (TrialResult::TimedOut, Verdict::Stop(Stop::TimeLimit))
    } else if o.is_oom() {
        // Also when it exits 0: a size that printed an OOM is not one to recommend.
        (TrialResult::OutOfMemory, Verdict::Oom)
    } else if o.success() {
        (TrialResult::Fits, Verdict::Fits)
    } else {
        (TrialResult::Failed, Verdict::Stop(Stop::CommandFailed))
    }
}

/// Peak GPU memory of a trial: its own processes where NVML shows them, else the device's rise.
fn peak_of(o: &Outcome) -> Option<u64> {
    let mut best: Option<u64> = None;
    for d in &o.gpu.devices {
        let v = d.peak_process_bytes.or_else(|| {
            d.peak_device_used_bytes
                .checked_sub(d.baseline_used_bytes)
                .filter(|v| *v > 0)
        });
        if let Some(v) = v {
            best = Some(best.map_or(v, |b| b.max(v)));
        }
    }
    best
}

/// Settings of how trials run.
pub struct Runner<'a> {
    pub echo: Echo,
    pub sampler: std::result::Result<&'a Sampler, &'a str>,
    pub grace: Duration,
    /// Called after each trial (progress lines).
    pub on_trial: &'a mut dyn FnMut(usize, &Trial),
    /// Called before each trial with its number, batch and accumulation.
    pub on_start: &'a mut dyn FnMut(usize, u64, u64),
    /// Value for `{steps}` in the final command.
    pub final_steps: Option<u64>,
}

/// Runs the whole search with real trials.
pub fn fit(template: &Template, cfg: &FitConfig, runner: Runner<'_>) -> Result<FitReport> {
    if cfg.effective_batch.is_some() && !template.has_accum {
        return Err(Error::input(format!(
            "--effective-batch needs the {ACCUM} placeholder in the command (where the gradient-accumulation steps go)"
        )));
    }
    if cfg.min_batch == 0 || cfg.min_batch > cfg.max_batch {
        return Err(Error::input(format!(
            "--min-batch {} and --max-batch {} do not make a range of sizes >= 1",
            cfg.min_batch, cfg.max_batch
        )));
    }
    let started = Instant::now();
    let mut trials: Vec<Trial> = Vec::new();
    let mut spawn_error: Option<Error> = None;
    let Runner {
        echo,
        sampler,
        grace,
        on_trial,
        on_start,
        final_steps,
    } = runner;

    let mut run_trial = |batch: u64, trials: &mut Vec<Trial>| -> Result<Verdict> {
        let accum = accum_for(batch, cfg.effective_batch);
        on_start(trials.len() + 1, batch, accum);
        let mut spec = Spec::new(template.render(batch, accum, Some(cfg.steps)));
        spec.echo = echo;
        spec.grace = grace;
        let remaining = cfg.time_limit.map(|t| t.saturating_sub(started.elapsed()));
        spec.timeout = match (remaining, cfg.trial_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let outcome = exec::execute(&spec, sampler)?;
        let (result, v) = verdict(&outcome);
        let t = Trial {
            batch,
            accum,
            result,
            exit_code: outcome.shell_code(),
            duration_s: outcome.duration_s,
            peak_gpu_bytes: peak_of(&outcome),
            oom_line: outcome.oom_line.clone(),
            output_tail: (result == TrialResult::Failed).then(|| last_lines(&outcome.tail, 20)),
        };
        on_trial(trials.len() + 1, &t);
        trials.push(t);
        Ok(v)
    };

    let limits = |n: usize| -> Option<Stop> {
        if n >= cfg.max_trials {
            return Some(Stop::TrialLimit);
        }
        match cfg.time_limit {
            Some(t) if started.elapsed() >= t => Some(Stop::TimeLimit),
            _ => None,
        }
    };

    let start = cfg.start_batch.unwrap_or(cfg.min_batch);
    let (lo, hi, mut stop) = {
        let cell = std::cell::RefCell::new(&mut trials);
        search(
            cfg.min_batch,
            cfg.max_batch,
            start,
            || limits(cell.borrow().len()),
            |b| match run_trial(b, &mut cell.borrow_mut()) {
                Ok(v) => v,
                Err(e) => {
                    spawn_error = Some(e);
                    Verdict::Stop(Stop::CommandFailed)
                }
            },
        )
    };
    if let Some(e) = spawn_error.take() {
        return Err(e);
    }

    // Keep the effective batch exactly: the largest divisor of it not above the largest size
    // that completed, verified by a trial of its own if it was not run yet.
    let mut best = lo.map(|b| choice(b, cfg.effective_batch));
    let mut alternative = None;
    if let (Some(l), Some(e)) = (lo, cfg.effective_batch) {
        if e % l != 0 {
            let d = (1..=l.min(e)).rev().find(|d| e % d == 0).unwrap_or(1);
            let done = trials
                .iter()
                .any(|t| t.batch == d && t.result == TrialResult::Fits);
            let ok = if done {
                true
            } else if limits(trials.len()).is_none() && stop != Stop::Interrupted {
                match run_trial(d, &mut trials)? {
                    Verdict::Fits => true,
                    Verdict::Stop(s) => {
                        if s == Stop::Interrupted {
                            stop = s;
                        }
                        false
                    }
                    Verdict::Oom => false,
                }
            } else {
                false
            };
            if ok {
                alternative = best;
                best = Some(choice(d, cfg.effective_batch));
            }
        }
    }
    let lr_note = match (best, cfg.effective_batch) {
        (Some(c), Some(e)) if c.effective_batch != e => {
            let r = c.effective_batch as f64 / e as f64;
            Some(LrNote {
                wanted_effective_batch: e,
                effective_batch: c.effective_batch,
                linear_scale: r,
                sqrt_scale: r.sqrt(),
            })
        }
        _ => None,
    };
    let command = best.map(|c| shell_join(&template.render(c.batch, c.accum, final_steps)));
    Ok(FitReport {
        template: template.argv.clone(),
        config: cfg.clone(),
        trials,
        stop,
        largest_fitting: lo,
        smallest_failing: hi,
        best,
        alternative,
        lr_note,
        command,
        gpu_unavailable: sampler.err().map(str::to_string),
        total_duration_s: started.elapsed().as_secs_f64(),
    })
}

fn choice(batch: u64, effective: Option<u64>) -> Choice {
    let accum = accum_for(batch, effective);
    Choice {
        batch,
        accum,
        effective_batch: batch * accum,
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Joins arguments into a line a POSIX shell reads back as the same arguments.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(a: &str) -> String {
    let safe = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%{}".contains(c));
    if safe {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_search(
        min: u64,
        max: u64,
        start: u64,
        cap: u64,
        max_trials: usize,
    ) -> (Option<u64>, Option<u64>, Stop, Vec<u64>) {
        let mut tried = Vec::new();
        let n = std::cell::Cell::new(0usize);
        let (lo, hi, s) = search(
            min,
            max,
            start,
            || (n.get() >= max_trials).then_some(Stop::TrialLimit),
            |b| {
                n.set(n.get() + 1);
                tried.push(b);
                if b <= cap {
                    Verdict::Fits
                } else {
                    Verdict::Oom
                }
            },
        );
        (lo, hi, s, tried)
    }

    #[test]
    fn finds_the_boundary() {
        let (lo, hi, s, tried) = run_search(1, 1024, 1, 37, 100);
        assert_eq!((lo, hi, s), (Some(37), Some(38), Stop::Complete));
        assert_eq!(&tried[..7], &[1, 2, 4, 8, 16, 32, 64]);
        // exponential (7) + binary between 32 and 64 (5)
        assert_eq!(tried.len(), 12);
    }

    #[test]
    fn shrinks_from_a_large_start() {
        let (lo, hi, s, tried) = run_search(1, 1024, 64, 10, 100);
        assert_eq!((lo, hi, s), (Some(10), Some(11), Stop::Complete));
        assert_eq!(&tried[..4], &[64, 32, 16, 8]);
    }

    #[test]
    fn nothing_fits_and_everything_fits() {
        let (lo, hi, s, tried) = run_search(1, 64, 8, 0, 100);
        assert_eq!((lo, hi, s), (None, Some(1), Stop::Complete));
        assert_eq!(tried, vec![8, 4, 2, 1]);
        let (lo, hi, s, _) = run_search(1, 64, 8, 1000, 100);
        assert_eq!((lo, hi, s), (Some(64), None, Stop::Complete));
    }

    #[test]
    fn trial_limit_stops() {
        let (lo, _, s, tried) = run_search(1, 1024, 1, 37, 4);
        assert_eq!(s, Stop::TrialLimit);
        assert_eq!(tried.len(), 4);
        assert_eq!(lo, Some(8));
    }

    #[test]
    fn accumulation_keeps_effective_batch() {
        assert_eq!(accum_for(16, Some(64)), 4);
        assert_eq!(accum_for(24, Some(64)), 3);
        assert_eq!(accum_for(128, Some(64)), 1);
        assert_eq!(accum_for(7, None), 1);
    }

    #[test]
    fn template_needs_batch() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Template::parse(&a(&["python", "t.py"])).is_err());
        assert!(Template::parse(&[]).is_err());
        let t =
            Template::parse(&a(&["python", "t.py", "--bs={batch}", "--ga", "{accum}"])).unwrap();
        assert!(t.has_accum && !t.has_steps);
        assert_eq!(
            t.render(8, 2, None),
            a(&["python", "t.py", "--bs=8", "--ga", "2"])
        );
    }

    #[test]
    fn quoting() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shell_join(&a(&["python", "t.py", "--name", "a b", "it's"])),
            "python t.py --name 'a b' 'it'\\''s'"
        );
    }
}
