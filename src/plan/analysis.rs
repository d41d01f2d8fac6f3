//! Assembles the whole plan: baseline, ranked configurations, single-knob solutions, the three
//! combinations of the seed's report, host-memory figures and caveats. Plain data; `report.rs` renders it.
use serde::Serialize;

use super::search::{self, Candidate, Change, Evaluator, Safety, SearchSpace};
use crate::knobs::{Checkpointing, Knobs, Precision};

/// One memory component of the baseline, bytes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Component {
    /// Key as in `estimate --format json` (`parameters`, `activations`, ...).
    pub name: String,
    pub bytes: u64,
}

/// What the plan knows of the model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub params: u64,
    pub trainable_params: u64,
    /// Input batch bytes per sample (for host-memory figures).
    pub input_bytes_per_sample: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GpuSummary {
    pub name: String,
    pub memory_bytes: u64,
    /// `None` when the GPU is not in the catalogue.
    pub bf16: Option<bool>,
    pub compute_capability: Option<(u32, u32)>,
}

/// DataLoader settings and the host memory they hold.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HostMemory {
    pub num_workers: u64,
    pub prefetch_factor: u64,
    pub pin_memory: bool,
    /// Batches in flight between workers and the main process (workers x prefetch), bytes.
    pub in_flight_bytes: u64,
    /// Page-locked buffers of the pin-memory thread, bytes.
    pub pinned_bytes: u64,
}

impl HostMemory {
    pub fn new(num_workers: u64, prefetch_factor: u64, pin_memory: bool, batch_bytes: u64) -> Self {
        // Each worker keeps `prefetch_factor` batches ready (torch.utils.data.DataLoader);
        // they travel through /dev/shm. The pin thread copies each batch into pinned memory,
        // holding about one batch per prefetched slot of the main process.
        let in_flight = num_workers.max(1) * prefetch_factor * batch_bytes;
        HostMemory {
            num_workers,
            prefetch_factor,
            pin_memory,
            in_flight_bytes: if num_workers == 0 { 0 } else { in_flight },
            pinned_bytes: if pin_memory {
                prefetch_factor.max(1) * batch_bytes
            } else {
                0
            },
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Combinations {
    pub max_saving: Option<Candidate>,
    pub balanced: Option<Candidate>,
    pub conservative: Option<Candidate>,
}

/// The device state read off the user's OOM message (`plan --log`).
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct LogState {
    pub line: u64,
    pub kind: String,
    pub total_capacity_bytes: Option<u64>,
    /// The per-process cap (`set_per_process_memory_fraction`), when the message gives one.
    pub allowed_bytes: Option<u64>,
    pub process_in_use_bytes: Option<u64>,
    pub allocated_bytes: Option<u64>,
    pub reserved_unallocated_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub requested_bytes: Option<u64>,
}

/// The whole plan, as `--format json` prints it (`baseline` and `plans`, best first, are the contract).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub model: ModelSummary,
    pub gpu: GpuSummary,
    pub baseline: Candidate,
    pub baseline_components: Vec<Component>,
    /// Configurations that fit, best first (at most `MAX_PLANS`).
    pub plans: Vec<Candidate>,
    /// The best configuration for each single change from the baseline.
    pub solutions: Vec<Candidate>,
    pub combinations: Combinations,
    pub host: Option<HostMemory>,
    /// From `--log`: the first OOM event, when the log has one.
    pub log: Option<LogState>,
    /// `--log` was given but held no OOM event.
    pub log_without_event: bool,
    pub searched: usize,
    /// True when no configuration fits.
    pub nothing_fits: bool,
    /// The estimator error margin used for "safe".
    pub margin_share: f64,
}

pub const MAX_PLANS: usize = 20;

/// Runs the search and assembles the plan.
pub fn build(
    eval: &dyn Evaluator,
    base: &Knobs,
    space: &SearchSpace,
    gpu: GpuSummary,
    model: ModelSummary,
    baseline_components: Vec<Component>,
    host: Option<HostMemory>,
) -> anyhow::Result<Plan> {
    let capacity = gpu.memory_bytes;
    let base_eval = eval.evaluate_exact(base)?;
    let base_sps =
        (base.batch * base.grad_accum * base.gpus) as f64 / base_eval.step_time_s.max(1e-12);
    let baseline = search::candidate(base, base.clone(), base_eval, capacity, base_sps);
    let fast = search::search(eval, base, space, capacity, base_sps);
    let searched = fast.len();

    // Re-estimate, with the evaluator's exact model, what the plan can show: the best fitting
    // configurations and the best of each kind of single change (fast figures only rank).
    let mut shown: Vec<Candidate> = Vec::new();
    let add = |c: &Candidate, shown: &mut Vec<Candidate>| {
        if shown.iter().any(|s| s.knobs == c.knobs) {
            return;
        }
        if let Ok(e) = eval.evaluate_exact(&c.knobs) {
            shown.push(search::candidate(
                base,
                c.knobs.clone(),
                e,
                capacity,
                base_sps,
            ));
        }
    };
    for c in fast.iter().filter(|c| c.fits).take(EXACT_RECHECK) {
        add(c, &mut shown);
    }
    for c in single_changes(&fast, &baseline, usize::MAX) {
        add(&c, &mut shown);
    }
    for c in combination_seeds(&fast, base) {
        add(c, &mut shown);
    }
    shown.sort_by(search::rank_cmp);
    let ranked = shown;
    let fitting: Vec<&Candidate> = ranked.iter().filter(|c| c.fits).collect();

    let plans: Vec<Candidate> = fitting
        .iter()
        .take(MAX_PLANS)
        .map(|c| (*c).clone())
        .collect();
    let solutions = single_changes(&ranked, &baseline, MAX_SOLUTIONS);
    let safe: Vec<&Candidate> = fitting
        .iter()
        .copied()
        .filter(|c| c.safety == Safety::Safe)
        .collect();
    let pool = if safe.is_empty() {
        fitting.clone()
    } else {
        safe
    };
    let balanced = pool.first().map(|c| (*c).clone());
    let max_saving = max_saving(&fitting, base).map(|c| (*c).clone());
    let conservative = pool
        .iter()
        .min_by(|a, b| {
            invasiveness(a).cmp(&invasiveness(b)).then(
                b.samples_per_s
                    .partial_cmp(&a.samples_per_s)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
        })
        .map(|c| (*c).clone());
    Ok(Plan {
        model,
        gpu,
        nothing_fits: fitting.is_empty(),
        baseline,
        baseline_components,
        plans,
        solutions,
        combinations: Combinations {
            max_saving,
            balanced,
            conservative,
        },
        host,
        log: None,
        log_without_event: false,
        searched,
        margin_share: search::ESTIMATOR_MARGIN,
    })
}

/// Fast-ranked configurations re-estimated exactly for the plan.
const EXACT_RECHECK: usize = 60;

/// Maximum saving: least memory without changing training dynamics, at a micro-batch of at
/// least a quarter of the user's (below that, accumulation costs more time than it saves memory).
fn max_saving<'a>(fitting: &[&'a Candidate], base: &Knobs) -> Option<&'a Candidate> {
    fitting
        .iter()
        .copied()
        .filter(|c| {
            !c.change_list.iter().any(Change::alters_dynamics) && c.knobs.batch * 4 >= base.batch
        })
        .min_by(|a, b| {
            a.eval
                .device_total_bytes
                .cmp(&b.eval.device_total_bytes)
                .then(
                    b.samples_per_s
                        .partial_cmp(&a.samples_per_s)
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
        })
}

/// Candidates the combinations may pick, from the fast ranking: the least-memory one and the
/// least invasive safe ones.
fn combination_seeds<'a>(fast: &'a [Candidate], base: &Knobs) -> Vec<&'a Candidate> {
    let fitting: Vec<&Candidate> = fast.iter().filter(|c| c.fits).collect();
    let mut out: Vec<&Candidate> = max_saving(&fitting, base).into_iter().collect();
    let mut by_invasiveness: Vec<&Candidate> = fitting
        .iter()
        .copied()
        .filter(|c| c.safety == Safety::Safe)
        .collect();
    by_invasiveness.sort_by_key(|c| invasiveness(c));
    out.extend(by_invasiveness.into_iter().take(10));
    out
}

/// How much a configuration asks of the user's code and training: changes of model code
/// (attention, selective checkpointing) and of dynamics weigh more than flags.
fn invasiveness(c: &Candidate) -> usize {
    c.change_list
        .iter()
        .map(|ch| match ch {
            _ if ch.alters_dynamics() => 4,
            Change::Attention { .. } => 2,
            Change::Checkpointing {
                to: Checkpointing::Selective,
                ..
            } => 2,
            Change::Precision {
                to: Precision::Fp16Mixed,
                ..
            } => 2,
            _ => 1,
        })
        .sum()
}

/// Kind of a single change, so each kind is listed once in the solutions.
fn kind(c: &Change) -> String {
    match c {
        Change::Precision { to, .. } => format!("precision:{}", to.name()),
        Change::Attention { .. } => "attention".into(),
        Change::Checkpointing { to, .. } => format!("ckpt:{to:?}"),
        Change::MicroBatch { .. } => "microbatch".into(),
        Change::EffectiveBatch { .. } => "batch".into(),
        Change::Optimizer { .. } => "optimizer".into(),
        Change::Sharding { to, .. } => format!("sharding:{to:?}"),
    }
}

/// Most single-change solutions listed.
pub const MAX_SOLUTIONS: usize = 10;

/// For each kind of single change, its best candidate (ranked order already puts safe and fast first;
/// for micro-batch changes that is the largest micro-batch that fits). Changes that neither save
/// memory (1%) nor gain speed (5%) are left out: they solve nothing.
fn single_changes(ranked: &[Candidate], base: &Candidate, most: usize) -> Vec<Candidate> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for c in ranked {
        if c.change_list.len() != 1 || out.len() >= most {
            continue;
        }
        let saves = (c.eval.device_total_bytes as f64) < 0.99 * base.eval.device_total_bytes as f64;
        if !saves && c.speedup < 1.05 {
            continue;
        }
        let k = kind(&c.change_list[0]);
        if seen.contains(&k) {
            continue;
        }
        seen.push(k);
        out.push(c.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{Attention, Optimizer, Sharding};
    use crate::plan::search::{batch_options, Evaluation};
    use crate::units::GIB;

    struct Fake;
    impl Evaluator for Fake {
        fn evaluate(&self, k: &Knobs) -> anyhow::Result<Evaluation> {
            let per = if k.precision.compute_bytes() == 2 {
                0.7
            } else {
                1.0
            };
            let attn = if k.attention == Attention::Sdpa {
                0.6
            } else {
                1.0
            };
            let ck = if k.checkpointing == Checkpointing::Full {
                0.15
            } else {
                1.0
            };
            let mem = (GIB as f64 * (2.0 + 1.7 * k.batch as f64 * per * attn * ck)) as u64;
            let t = k.grad_accum as f64
                * (0.03 * k.batch as f64 * per * attn * if ck < 1.0 { 1.5 } else { 1.0 } + 0.05);
            Ok(Evaluation {
                peak_allocated_bytes: mem,
                peak_reserved_bytes: mem,
                device_total_bytes: mem,
                step_time_s: t,
            })
        }
    }

    fn base() -> Knobs {
        crate::plan::test_knobs(16)
    }

    #[test]
    fn builds_a_plan_with_three_combinations() {
        let space = SearchSpace {
            precisions: vec![Precision::Fp32, Precision::Bf16Mixed],
            attentions: vec![Attention::Eager, Attention::Sdpa],
            checkpointing: vec![(Checkpointing::None, vec![]), (Checkpointing::Full, vec![])],
            batches: batch_options(16, 1, false),
            optimizers: vec![Optimizer::Adamw],
            shardings: vec![Sharding::None],
        };
        let gpu = GpuSummary {
            name: "test".into(),
            memory_bytes: 24 * GIB,
            bf16: Some(true),
            compute_capability: Some((8, 6)),
        };
        let model = ModelSummary {
            name: "m".into(),
            params: 1,
            trainable_params: 1,
            input_bytes_per_sample: 1 << 20,
        };
        let p = build(
            &Fake,
            &base(),
            &space,
            gpu,
            model,
            vec![],
            Some(HostMemory::new(8, 2, true, 16 << 20)),
        )
        .unwrap();
        assert!(!p.baseline.fits, "baseline 29.2 GiB must not fit 24 GiB");
        assert!(!p.nothing_fits);
        let b = p.combinations.balanced.as_ref().unwrap();
        assert_eq!(b.safety, Safety::Safe);
        // Fastest safe: bf16 + sdpa at the full batch (2 + 1.7*16*0.42 = 13.4 GiB).
        assert_eq!(
            (b.knobs.precision, b.knobs.attention, b.knobs.batch),
            (Precision::Bf16Mixed, Attention::Sdpa, 16)
        );
        let m = p.combinations.max_saving.as_ref().unwrap();
        assert!(m.eval.device_total_bytes <= b.eval.device_total_bytes);
        assert_eq!(m.knobs.checkpointing, Checkpointing::Full);
        // Every solution is one change.
        assert!(p.solutions.iter().all(|s| s.change_list.len() == 1));
        assert!(p.plans.iter().all(|c| c.fits));
        assert_eq!(p.host.unwrap().in_flight_bytes, 8 * 2 * (16 << 20));
    }
}
