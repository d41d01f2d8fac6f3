//! The knob search: enumerate candidate configurations around the user's, evaluate each, rank.
//!
//! Ranking (issue: fits with a margin that covers the estimator's error, then throughput, then
//! least change to training dynamics):
//! 1. `Safety::Safe` before `Safety::Tight` before `Safety::NoFit`;
//! 2. predicted samples/s, higher first, where each change that alters training dynamics
//!    (effective batch, optimizer, pure 16-bit weights) must buy more (`Change::dynamics_penalty`);
//! 3. fewer changes that alter training dynamics, then fewer changes.
use serde::Serialize;

use crate::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};

/// What a configuration costs, as the evaluator predicts it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Evaluation {
    pub peak_allocated_bytes: u64,
    pub peak_reserved_bytes: u64,
    /// Reserved + memory outside PyTorch: what the card must hold.
    pub device_total_bytes: u64,
    /// Predicted seconds per optimizer step (all micro-batches).
    pub step_time_s: f64,
}

/// Anything that can predict memory and time of a configuration (the analytic model, a trace, a test fake).
pub trait Evaluator {
    /// The fast prediction the search runs on every candidate.
    fn evaluate(&self, knobs: &Knobs) -> anyhow::Result<Evaluation>;
    /// The most accurate prediction, for the configurations a plan shows (default: the same).
    fn evaluate_exact(&self, knobs: &Knobs) -> anyhow::Result<Evaluation> {
        self.evaluate(knobs)
    }
    /// Called once with every candidate before they are evaluated (default: nothing), so an
    /// evaluator can build what they share up front.
    fn prepare(&self, _candidates: &[Knobs]) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Safety {
    /// Fits with the estimator's error margin to spare.
    Safe,
    /// Fits by the estimate, but within the estimator's error margin.
    Tight,
    NoFit,
}

pub use crate::memory::ESTIMATOR_MARGIN;

pub fn safety(device_total: u64, capacity: u64) -> Safety {
    if device_total > capacity {
        Safety::NoFit
    } else if crate::memory::fits_with_margin(device_total, capacity) {
        Safety::Safe
    } else {
        Safety::Tight
    }
}

/// One change relative to the user's configuration.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "knob", rename_all = "snake_case")]
pub enum Change {
    Precision {
        from: Precision,
        to: Precision,
    },
    Attention {
        from: Attention,
        to: Attention,
    },
    Checkpointing {
        from: Checkpointing,
        to: Checkpointing,
        modules: Vec<String>,
    },
    MicroBatch {
        from: u64,
        to: u64,
        grad_accum: u64,
    },
    EffectiveBatch {
        from: u64,
        to: u64,
    },
    Optimizer {
        from: Optimizer,
        to: Optimizer,
    },
    Sharding {
        from: Sharding,
        to: Sharding,
    },
}

impl Change {
    /// Whether the change alters what training computes (not only how): these need care
    /// (learning rate, convergence) and rank after equal-speed options that do not.
    pub fn alters_dynamics(&self) -> bool {
        match self {
            Change::EffectiveBatch { .. } => true,
            Change::Optimizer { from, to } => !matches!(
                (from, to),
                (Optimizer::Adamw, Optimizer::AdamwFused)
                    | (Optimizer::AdamwFused, Optimizer::Adamw)
            ),
            Change::Precision { to, .. } => matches!(to, Precision::Bf16True | Precision::Fp16True),
            _ => false,
        }
    }

    /// English, for JSON `changes`; reports render `Change` in the user's language.
    pub fn describe(&self) -> String {
        match self {
            Change::Precision { from, to } => format!("precision {} -> {}", from.name(), to.name()),
            Change::Attention { from, to } => {
                format!("attention {:?} -> {:?}", from, to).to_lowercase()
            }
            Change::Checkpointing { to, modules, .. } => match to {
                Checkpointing::None => "no activation checkpointing".into(),
                Checkpointing::Full => "activation checkpointing of every repeated block".into(),
                Checkpointing::Selective => {
                    format!("activation checkpointing of {}", modules.join(", "))
                }
            },
            Change::MicroBatch {
                from,
                to,
                grad_accum,
            } => {
                format!("micro-batch {from} -> {to} with gradient accumulation {grad_accum} (same effective batch)")
            }
            Change::EffectiveBatch { from, to } => {
                format!("effective batch {from} -> {to}: scale the learning rate by {to}/{from} (linear rule) or sqrt({to}/{from}) for Adam-type optimizers")
            }
            Change::Optimizer { from, to } => format!("optimizer {} -> {}", from.name(), to.name()),
            Change::Sharding { from, to } => {
                format!("sharding {:?} -> {:?}", from, to).to_lowercase()
            }
        }
    }
}

/// The differences between two configurations, in a fixed order.
pub fn changes(base: &Knobs, k: &Knobs) -> Vec<Change> {
    let mut out = Vec::new();
    if base.precision != k.precision {
        out.push(Change::Precision {
            from: base.precision,
            to: k.precision,
        });
    }
    if base.attention != k.attention {
        out.push(Change::Attention {
            from: base.attention,
            to: k.attention,
        });
    }
    if base.checkpointing != k.checkpointing || base.checkpoint_modules != k.checkpoint_modules {
        out.push(Change::Checkpointing {
            from: base.checkpointing,
            to: k.checkpointing,
            modules: k.checkpoint_modules.clone(),
        });
    }
    let eff = |k: &Knobs| k.batch * k.grad_accum * k.gpus;
    if base.batch != k.batch || base.grad_accum != k.grad_accum {
        if eff(base) == eff(k) {
            out.push(Change::MicroBatch {
                from: base.batch,
                to: k.batch,
                grad_accum: k.grad_accum,
            });
        } else {
            out.push(Change::EffectiveBatch {
                from: eff(base),
                to: eff(k),
            });
        }
    }
    if base.optimizer != k.optimizer {
        out.push(Change::Optimizer {
            from: base.optimizer,
            to: k.optimizer,
        });
    }
    if base.sharding != k.sharding {
        out.push(Change::Sharding {
            from: base.sharding,
            to: k.sharding,
        });
    }
    out
}

/// What the search may vary.
#[derive(Clone, Debug)]
pub struct SearchSpace {
    pub precisions: Vec<Precision>,
    pub attentions: Vec<Attention>,
    /// (checkpointing, modules) options.
    pub checkpointing: Vec<(Checkpointing, Vec<String>)>,
    /// (micro-batch, accumulation) options.
    pub batches: Vec<(u64, u64)>,
    pub optimizers: Vec<Optimizer>,
    pub shardings: Vec<Sharding>,
}

impl SearchSpace {
    pub fn size(&self) -> usize {
        self.precisions.len()
            * self.attentions.len()
            * self.checkpointing.len()
            * self.batches.len()
            * self.optimizers.len()
            * self.shardings.len()
    }

    pub fn candidates<'a>(&'a self, base: &'a Knobs) -> impl Iterator<Item = Knobs> + 'a {
        self.precisions.iter().flat_map(move |&precision| {
            self.attentions.iter().flat_map(move |&attention| {
                self.checkpointing
                    .iter()
                    .flat_map(move |(checkpointing, modules)| {
                        self.batches.iter().flat_map(move |&(batch, grad_accum)| {
                            self.optimizers.iter().flat_map(move |&optimizer| {
                                self.shardings.iter().map(move |&sharding| Knobs {
                                    batch,
                                    grad_accum,
                                    precision,
                                    checkpointing: *checkpointing,
                                    checkpoint_modules: modules.clone(),
                                    attention,
                                    optimizer,
                                    gpus: base.gpus,
                                    sharding,
                                    lora_rank: base.lora_rank,
                                    lora_targets: base.lora_targets.clone(),
                                })
                            })
                        })
                    })
            })
        })
    }
}

/// Micro-batch options that keep the effective batch `eff`: every divisor (accumulation = eff / micro),
/// largest first. With `allow_smaller`, also powers of two below the batch without accumulation.
pub fn batch_options(batch: u64, grad_accum: u64, allow_change: bool) -> Vec<(u64, u64)> {
    let eff = batch * grad_accum;
    let mut out: Vec<(u64, u64)> = (1..=eff)
        .rev()
        .filter(|m| eff % m == 0)
        .map(|m| (m, eff / m))
        .collect();
    // Cap the list: micro-batches below 1/64 of the effective batch are never faster.
    out.retain(|(m, _)| m * 64 >= eff || *m == 1);
    if allow_change {
        let mut m = 1;
        while m < batch {
            if !out.contains(&(m, 1)) {
                out.push((m, 1));
            }
            m *= 2;
        }
    }
    out
}

/// One evaluated configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub knobs: Knobs,
    #[serde(flatten)]
    pub eval: Evaluation,
    pub fits: bool,
    pub safety: Safety,
    /// Capacity minus device total (negative when it does not fit).
    pub margin_bytes: i64,
    pub samples_per_s: f64,
    /// Throughput relative to the user's configuration (as if it had the memory).
    pub speedup: f64,
    #[serde(skip)]
    pub change_list: Vec<Change>,
    /// Human-readable changes (English; reports translate `change_list`). Filled by
    /// `candidate`; empty in the ranking `search` returns.
    pub changes: Vec<String>,
}

pub fn candidate(
    base: &Knobs,
    knobs: Knobs,
    eval: Evaluation,
    capacity: u64,
    base_sps: f64,
) -> Candidate {
    let mut c = ranked_candidate(base, knobs, eval, capacity, base_sps);
    c.changes = c.change_list.iter().map(Change::describe).collect();
    c
}

/// `candidate` without the English `changes` strings: all the search ranks by.
fn ranked_candidate(
    base: &Knobs,
    knobs: Knobs,
    eval: Evaluation,
    capacity: u64,
    base_sps: f64,
) -> Candidate {
    let samples = (knobs.batch * knobs.grad_accum * knobs.gpus) as f64;
    let sps = if eval.step_time_s > 0.0 {
        samples / eval.step_time_s
    } else {
        0.0
    };
    Candidate {
        fits: eval.device_total_bytes <= capacity,
        safety: safety(eval.device_total_bytes, capacity),
        margin_bytes: capacity as i64 - eval.device_total_bytes as i64,
        samples_per_s: sps,
        speedup: if base_sps > 0.0 { sps / base_sps } else { 0.0 },
        changes: Vec::new(),
        change_list: changes(base, &knobs),
        knobs,
        eval,
    }
}

impl Change {
    /// Share of throughput a change of training dynamics must buy to rank above a configuration
    /// that computes the same training. A predicted gain below 10% is well inside the step-time
    /// model's error (median 17% on the calibration rows, docs/accuracy.md), so it never outranks
    /// an unchanged optimisation problem. Pure 16-bit weights must buy 25%: bf16 keeps 8 bits of mantissa, so an
    /// update smaller than 1/256 of a weight is rounded away unless the optimizer compensates.
    pub fn dynamics_penalty(&self) -> f64 {
        match self {
            Change::Precision {
                to: Precision::Bf16True | Precision::Fp16True,
                ..
            } => 0.25,
            c if c.alters_dynamics() => 0.10,
            _ => 0.0,
        }
    }
}

/// Throughput used for ranking: predicted samples/s, discounted per dynamics-altering change.
pub fn ranking_speed(c: &Candidate) -> f64 {
    c.change_list
        .iter()
        .fold(c.samples_per_s, |s, ch| s * (1.0 - ch.dynamics_penalty()))
}

/// What `rank_cmp` compares, computed once per candidate.
#[derive(Clone, Copy, Debug)]
struct RankKey {
    safety: Safety,
    speed: f64,
    dynamics_changes: usize,
    changes: usize,
    device_total: u64,
}

impl RankKey {
    fn of(c: &Candidate) -> RankKey {
        RankKey {
            safety: c.safety,
            speed: ranking_speed(c),
            dynamics_changes: c.change_list.iter().filter(|c| c.alters_dynamics()).count(),
            changes: c.change_list.len(),
            device_total: c.eval.device_total_bytes,
        }
    }

    fn cmp(&self, b: &RankKey) -> std::cmp::Ordering {
        self.safety
            .cmp(&b.safety)
            .then(
                b.speed
                    .partial_cmp(&self.speed)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(self.dynamics_changes.cmp(&b.dynamics_changes))
            .then(self.changes.cmp(&b.changes))
            .then(self.device_total.cmp(&b.device_total))
    }
}

/// Ranking order (see module doc).
pub fn rank_cmp(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    RankKey::of(a).cmp(&RankKey::of(b))
}

/// Sorts best first: the stable `sort_by(rank_cmp)`, with each candidate's key computed once.
pub fn rank(candidates: Vec<Candidate>) -> Vec<Candidate> {
    // sort (key, position) pairs, not the candidates themselves (a few hundred bytes each)
    let mut keyed: Vec<(RankKey, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (RankKey::of(c), i))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
    keyed.iter().filter_map(|&(_, i)| slots[i].take()).collect()
}

/// Evaluates every candidate of the space and returns them ranked, best first.
/// Candidates the evaluator rejects (e.g. a sharding that needs more GPUs) are skipped.
/// Their English `changes` are left empty (`change_list` holds them): `candidate` fills them for
/// the configurations a plan shows.
pub fn search(
    eval: &dyn Evaluator,
    base: &Knobs,
    space: &SearchSpace,
    capacity: u64,
    base_sps: f64,
) -> Vec<Candidate> {
    let candidates: Vec<Knobs> = space.candidates(base).collect();
    eval.prepare(&candidates);
    let out: Vec<Candidate> = candidates
        .into_iter()
        .filter_map(|k| {
            eval.evaluate(&k)
                .ok()
                .map(|e| ranked_candidate(base, k, e, capacity, base_sps))
        })
        .collect();
    rank(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::GIB;

    /// Memory proportional to micro-batch and bytes per activation; time grows with checkpointing.
    struct Fake;
    impl Evaluator for Fake {
        fn evaluate(&self, k: &Knobs) -> anyhow::Result<Evaluation> {
            let per = if k.precision.compute_bytes() == 2 {
                1.0
            } else {
                2.0
            };
            let ck = if k.checkpointing == Checkpointing::Full {
                0.2
            } else {
                1.0
            };
            let mem = (GIB as f64 * (2.0 + k.batch as f64 * per * ck)) as u64;
            let t = k.grad_accum as f64
                * (0.01 * k.batch as f64 * per * if ck < 1.0 { 1.3 } else { 1.0 } + 0.02);
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
    fn batch_options_keep_effective_batch() {
        let o = batch_options(16, 1, false);
        assert_eq!(o, vec![(16, 1), (8, 2), (4, 4), (2, 8), (1, 16)]);
        assert!(batch_options(16, 1, true).contains(&(4, 1)));
    }

    #[test]
    fn safety_levels() {
        assert_eq!(safety(22 * GIB, 23 * GIB), Safety::Tight);
        assert_eq!(safety(20 * GIB, 23 * GIB), Safety::Safe);
        assert_eq!(safety(24 * GIB, 23 * GIB), Safety::NoFit);
        // safe means it still fits if the estimate is as far under as the worst calibration row
        // (-8.3%): an estimate of 91.8% of the card needs 100.1% of it then
        let cap = 100 * GIB;
        assert_eq!(safety(cap * 918 / 1000, cap), Safety::Tight);
        assert_eq!(safety(cap * 90 / 100, cap), Safety::Safe);
    }

    #[test]
    fn ranks_safe_fast_and_unchanged_first() {
        let space = SearchSpace {
            precisions: vec![Precision::Fp32, Precision::Bf16Mixed],
            attentions: vec![Attention::Eager],
            checkpointing: vec![(Checkpointing::None, vec![]), (Checkpointing::Full, vec![])],
            batches: batch_options(16, 1, false),
            optimizers: vec![Optimizer::Adamw],
            shardings: vec![Sharding::None],
        };
        let base_eval = Fake.evaluate(&base()).unwrap();
        let base_sps = 16.0 / base_eval.step_time_s;
        let ranked = search(&Fake, &base(), &space, 24 * GIB, base_sps);
        assert_eq!(ranked.len(), space.size());
        let top = &ranked[0];
        assert_eq!(top.safety, Safety::Safe);
        // bf16 at the full batch: 2 + 16 = 18 GiB, safe on 24 GiB, fastest.
        assert_eq!(top.knobs.precision, Precision::Bf16Mixed);
        assert_eq!((top.knobs.batch, top.knobs.grad_accum), (16, 1));
        assert!(top.speedup > 1.0);
        // Everything ranked after a no-fit is a no-fit.
        let first_nofit = ranked
            .iter()
            .position(|c| c.safety == Safety::NoFit)
            .unwrap();
        assert!(ranked[first_nofit..]
            .iter()
            .all(|c| c.safety == Safety::NoFit));
    }

    #[test]
    fn effective_batch_change_is_flagged() {
        let mut k = base();
        k.batch = 8;
        let c = changes(&base(), &k);
        assert!(matches!(c[0], Change::EffectiveBatch { from: 16, to: 8 }));
        assert!(c[0].alters_dynamics());
        assert!(c[0].describe().contains("learning rate"));
        k.grad_accum = 2;
        assert!(!changes(&base(), &k)[0].alters_dynamics());
    }
}
