//! The evaluator behind `plan`: the analytic memory model (`memory::estimate_on`) for memory and
//! the roofline (`throughput`) for time, on one workload and GPU.
use super::search::{Evaluation, Evaluator, SearchSpace};
use std::cell::{Cell, RefCell};

use super::throughput::{Coefficients, OpCost, StepCost};
use crate::gpu::{GpuSpec, TargetGpu};
use crate::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};
use crate::memory::optimizer::OptimizerMemory;
use crate::model::graph::Mode;
use crate::model::Workload;

/// Bytes the optimizer step reads and writes per trainable parameter (fp32 parameters).
/// AdamW foreach (torch/optim/adamw.py, `_multi_tensor_adamw`): reads p, g, m, v and writes p, m, v
/// (28 B) plus its intermediate tensors (sqrt(v), denominators: ~4 more passes, 16 B); fused
/// (`_fused_adamw`): one kernel, 28 B; SGD with momentum: reads p, g, buf, writes p, buf (20 B);
/// plain SGD: 12 B; 8-bit AdamW: fp32 p and g, 1-byte m and v (4+4+1+1 read, 4+1+1 write).
fn optimizer_bytes_per_param(o: Optimizer) -> f64 {
    match o {
        Optimizer::Adamw | Optimizer::Adam => 44.0,
        Optimizer::AdamwFused => 28.0,
        Optimizer::SgdMomentum => 20.0,
        Optimizer::Sgd => 12.0,
        Optimizer::Adafactor => 24.0,
        Optimizer::Adamw8bit => 16.0,
    }
}

/// What one step costs, from the workload's traced forward pass: per op, forward + backward
/// (backward computes two matmuls per forward matmul and touches about twice the bytes) and the
/// forward again where the op's block is checkpointed.
pub fn step_cost(w: &Workload, k: &Knobs) -> StepCost {
    let t = w.trace(Mode::of(k.precision), k.attention);
    let ck = crate::memory::checkpoint_flags(t, k);
    let bytes_of =
        |ts: &[crate::model::graph::T]| -> f64 { ts.iter().map(|x| t.info(*x).bytes()).sum() };
    let mut launches = 0.0;
    let ops = t
        .ops
        .iter()
        .map(|o| {
            let passes = if ck[o.stage] { 4.0 } else { 3.0 };
            launches += passes;
            OpCost {
                flops: passes * o.flops,
                bytes: passes * (bytes_of(&o.inputs) + bytes_of(&o.outputs)),
            }
        })
        .collect();
    StepCost {
        ops,
        launches,
        optimizer_bytes: step_cost_optimizer_bytes(w, k),
    }
}

/// What does not change within one (precision, attention, checkpointing) group of candidates:
/// the memory model's prepared profile, the per-sample step time, and what each optimizer and
/// batch size of the group needed so far. The search enumerates candidates group by group, so
/// each group is built once and every further candidate costs a pass over the profile's points.
struct Group<'a> {
    /// The knobs the group was built for: its precision, attention and checkpointing are the
    /// group's (`same_group`).
    knobs: Knobs,
    prep: crate::memory::Prepared<'a>,
    /// Step time of one sample of one micro-step (roofline), and the launches per micro-step.
    per_sample: f64,
    launches: f64,
    optimizers: Vec<(Optimizer, OptimizerMemory)>,
    /// `memory::live_set` per batch size.
    live: Vec<(u64, Vec<(u64, u32)>)>,
}

/// The group of `k`: its prepared profile (trace, checkpoint flags, step walk) and the step
/// time of one sample of one micro-step with its launches (the rest scales linearly with
/// batch and accumulation).
fn new_group<'w>(
    w: &'w Workload,
    rates: &'static GpuSpec,
    coefficients: Coefficients,
    k: &Knobs,
) -> Group<'w> {
    let unit = Knobs {
        batch: 1,
        grad_accum: 1,
        ..k.clone()
    };
    let cost = step_cost(w, &unit);
    let terms = coefficients.terms(&cost, &unit, rates);
    Group {
        knobs: k.clone(),
        prep: crate::memory::prepare(w, k),
        per_sample: terms.roofline,
        launches: terms.launches,
        optimizers: Vec::new(),
        live: Vec::new(),
    }
}

/// Whether two configurations share a group (the same profile and step time per sample).
fn same_group(a: &Knobs, b: &Knobs) -> bool {
    a.precision == b.precision
        && a.attention == b.attention
        && a.checkpointing == b.checkpointing
        && a.checkpoint_modules == b.checkpoint_modules
}

impl Group<'_> {
    fn is_for(&self, k: &Knobs) -> bool {
        same_group(&self.knobs, k)
    }
}

pub struct ModelEvaluator<'a> {
    pub workload: &'a Workload,
    pub gpu: &'a TargetGpu,
    /// Rates for the step-time model.
    pub rates: &'static GpuSpec,
    pub coefficients: Coefficients,
    /// The groups evaluated so far, and the one used last.
    groups: RefCell<Vec<Group<'a>>>,
    last: Cell<usize>,
}

impl<'a> ModelEvaluator<'a> {
    pub fn new(
        workload: &'a Workload,
        gpu: &'a TargetGpu,
        rates: &'static GpuSpec,
        coefficients: Coefficients,
    ) -> Self {
        ModelEvaluator {
            workload,
            gpu,
            rates,
            coefficients,
            groups: RefCell::new(Vec::new()),
            last: Cell::new(0),
        }
    }

    /// Index of `k`'s group in `groups`, built on first use.
    fn group(&self, k: &Knobs) -> usize {
        {
            let groups = self.groups.borrow();
            let last = self.last.get();
            if groups.get(last).is_some_and(|g| g.is_for(k)) {
                return last;
            }
            if let Some(i) = groups.iter().position(|g| g.is_for(k)) {
                self.last.set(i);
                return i;
            }
        }
        let g = new_group(self.workload, self.rates, self.coefficients, k);
        let mut groups = self.groups.borrow_mut();
        groups.push(g);
        self.last.set(groups.len() - 1);
        groups.len() - 1
    }

    fn step_time_in(&self, g: &Group, k: &Knobs) -> f64 {
        let opt = step_cost_optimizer_bytes(self.workload, k) / (self.rates.bandwidth_gbs * 1e9);
        (k.batch * k.grad_accum) as f64 * g.per_sample
            + self.coefficients.launch * g.launches * k.grad_accum as f64
            + self.coefficients.optimizer * opt
    }

    /// Predicted seconds per optimizer step.
    pub fn step_time(&self, k: &Knobs) -> f64 {
        let gi = self.group(k);
        self.step_time_in(&self.groups.borrow()[gi], k)
    }
}

fn step_cost_optimizer_bytes(w: &Workload, k: &Knobs) -> f64 {
    let param_scale = if Mode::of(k.precision) == Mode::HalfTrue {
        0.5
    } else {
        1.0
    };
    w.trainable_params as f64 * optimizer_bytes_per_param(k.optimizer) * param_scale
        / k.gpus.max(1) as f64
}

impl Evaluator for ModelEvaluator<'_> {
    /// Builds the groups the candidates need on all cores (each is a step walk and a step-time
    /// profile, independent of the others); the search then only reads them.
    fn prepare(&self, candidates: &[Knobs]) {
        let mut todo: Vec<&Knobs> = Vec::new();
        {
            let groups = self.groups.borrow();
            for k in candidates {
                if !groups.iter().any(|g| g.is_for(k)) && !todo.iter().any(|t| same_group(t, k)) {
                    todo.push(k);
                }
            }
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(todo.len());
        if threads < 2 {
            return;
        }
        let (w, rates, coefficients) = (self.workload, self.rates, self.coefficients);
        let built: Vec<Group<'_>> = std::thread::scope(|s| {
            let chunks: Vec<_> = todo
                .chunks(todo.len().div_ceil(threads))
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|k| new_group(w, rates, coefficients, k))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            chunks
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        self.groups.borrow_mut().extend(built);
    }

    /// The search uses the closed-form reserved-memory model (`memory::totals_fast`, the numbers
    /// of `memory::estimate_fast`) against the candidate's group, prepared once.
    fn evaluate(&self, k: &Knobs) -> anyhow::Result<Evaluation> {
        let gi = self.group(k);
        let mut groups = self.groups.borrow_mut();
        let g = &mut groups[gi];
        let opt = match g.optimizers.iter().find(|(o, _)| *o == k.optimizer) {
            Some(&(_, m)) => m,
            None => {
                let t = g.prep.trace;
                let m = crate::memory::optimizer::optimizer_memory(&t.params, k.optimizer, t.mode);
                g.optimizers.push((k.optimizer, m));
                m
            }
        };
        let li = match g.live.iter().position(|(b, _)| *b == k.batch) {
            Some(i) => i,
            None => {
                let mut live = Vec::new();
                crate::memory::live_set(&g.prep.profile, k.batch, &mut live);
                g.live.push((k.batch, live));
                g.live.len() - 1
            }
        };
        let e = crate::memory::totals_fast(
            self.workload,
            &g.prep,
            k,
            Some(self.gpu),
            &opt,
            &g.live[li].1,
        )?;
        Ok(Evaluation {
            peak_allocated_bytes: e.peak_allocated_bytes,
            peak_reserved_bytes: e.peak_reserved_bytes,
            device_total_bytes: e.device_total_bytes,
            step_time_s: self.step_time_in(g, k),
        })
    }

    /// What the plan shows is re-estimated with the allocator replay (milliseconds, more accurate).
    fn evaluate_exact(&self, k: &Knobs) -> anyhow::Result<Evaluation> {
        let e = crate::memory::estimate_on(self.workload, k, Some(self.gpu))?;
        Ok(Evaluation {
            peak_allocated_bytes: e.peak_allocated_bytes,
            peak_reserved_bytes: e.peak_reserved_bytes,
            device_total_bytes: e.device_total_bytes,
            step_time_s: self.step_time(k),
        })
    }
}

/// The knobs `plan` searches for this workload on this GPU.
pub fn search_space(
    w: &Workload,
    base: &Knobs,
    gpu: Option<&GpuSpec>,
    allow_batch_change: bool,
) -> SearchSpace {
    let bf16 = gpu.map(|g| g.bf16).unwrap_or(true);
    let tf32 = gpu.map(|g| g.tf32_tflops > 0.0).unwrap_or(true);
    let mut precisions = vec![base.precision, Precision::Fp32];
    if tf32 {
        precisions.push(Precision::Tf32);
    }
    if bf16 {
        precisions.push(Precision::Bf16Mixed);
        precisions.push(Precision::Bf16True);
    }
    // fp16 autocast saves what bf16 saves but needs loss scaling and can overflow: only where
    // the GPU has no bf16.
    if !bf16 {
        precisions.push(Precision::Fp16Mixed);
    }
    dedup(&mut precisions);

    let has_attention = w.compute_profile(base).attention_matrix_elems_per_sample > 0.0;
    let mut attentions = vec![base.attention];
    if has_attention {
        attentions.extend([Attention::Eager, Attention::Sdpa]);
    }
    dedup(&mut attentions);

    let mut checkpointing = vec![
        (base.checkpointing, base.checkpoint_modules.clone()),
        (Checkpointing::None, vec![]),
        (Checkpointing::Full, vec![]),
    ];
    let groups = w.module_groups();
    if groups.len() > 1 && groups.len() <= 4 {
        // every proper, non-empty subset of the repeated-block groups
        for mask in 1..(1u32 << groups.len()) - 1 {
            let sel: Vec<String> = groups
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, g)| g.clone())
                .collect();
            checkpointing.push((Checkpointing::Selective, sel));
        }
    }
    dedup(&mut checkpointing);

    let mut optimizers = vec![base.optimizer];
    if base.optimizer == Optimizer::Adamw {
        optimizers.push(Optimizer::AdamwFused);
    }
    optimizers.extend([Optimizer::Adamw8bit, Optimizer::Adafactor]);
    dedup(&mut optimizers);

    let shardings = if base.gpus > 1 {
        vec![
            Sharding::None,
            Sharding::Zero1,
            Sharding::Zero2,
            Sharding::Zero3,
            Sharding::Fsdp,
        ]
    } else {
        vec![base.sharding]
    };
    SearchSpace {
        precisions,
        attentions,
        checkpointing,
        batches: super::search::batch_options(base.batch, base.grad_accum, allow_batch_change),
        optimizers,
        shardings,
    }
}

fn dedup<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v.drain(..) {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    *v = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::KnobArgs;
    use crate::plan::search::Evaluator;

    /// The grouped fast path must give exactly what a fresh `estimate_fast` and a step time
    /// computed from scratch give (the search before the group caches), on a sample of the
    /// seed's candidates visited out of order.
    #[test]
    fn grouped_evaluation_equals_the_direct_one() {
        let args = KnobArgs {
            batch: Some(16),
            gpus: Some(4),
            precision: Some(Precision::Fp32),
            ..Default::default()
        };
        let w = crate::model::resolve("preset:navdp", std::path::Path::new("."), &args).unwrap();
        let base = w.resolve_knobs(&args).unwrap();
        let gpu = crate::gpu::GpuArgs {
            gpu: Some("rtx3090".into()),
            gpu_memory: None,
        }
        .resolve()
        .unwrap()
        .unwrap();
        let rates = gpu.spec.unwrap();
        let coefficients = crate::plan::calibrate::FITTED;
        let eval = ModelEvaluator::new(&w, &gpu, rates, coefficients);
        let space = search_space(&w, &base, gpu.spec, true);
        let all: Vec<Knobs> = space.candidates(&base).collect();
        assert!(all.len() > 10_000);
        // every 37th candidate (every group, batch, optimizer and sharding appear), last first
        let sample: Vec<&Knobs> = all.iter().step_by(37).rev().collect();
        for k in sample {
            let fast = eval.evaluate(k).unwrap();
            let e = crate::memory::estimate_fast(&w, k, Some(&gpu)).unwrap();
            let unit = Knobs {
                batch: 1,
                grad_accum: 1,
                ..k.clone()
            };
            let terms = coefficients.terms(&step_cost(&w, &unit), &unit, rates);
            let opt = step_cost_optimizer_bytes(&w, k) / (rates.bandwidth_gbs * 1e9);
            let step = (k.batch * k.grad_accum) as f64 * terms.roofline
                + coefficients.launch * terms.launches * k.grad_accum as f64
                + coefficients.optimizer * opt;
            let direct = Evaluation {
                peak_allocated_bytes: e.peak_allocated_bytes,
                peak_reserved_bytes: e.peak_reserved_bytes,
                device_total_bytes: e.device_total_bytes,
                step_time_s: step,
            };
            assert_eq!(fast, direct, "{k:?}");
        }
        // groups built up front on several threads give the same answers as built on demand
        let prepared = ModelEvaluator::new(&w, &gpu, rates, coefficients);
        prepared.prepare(&all);
        for k in all.iter().step_by(53) {
            assert_eq!(
                prepared.evaluate(k).unwrap(),
                eval.evaluate(k).unwrap(),
                "{k:?}"
            );
        }
    }
}
