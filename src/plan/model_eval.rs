//! The evaluator behind `plan`: the analytic memory model (`memory::estimate_on`) for memory and
//! the roofline (`throughput`) for time, on one workload and GPU.
use super::search::{Evaluation, Evaluator, SearchSpace};
use std::cell::RefCell;
use std::collections::HashMap;

use super::throughput::{Coefficients, OpCost, StepCost};
use crate::gpu::{GpuSpec, TargetGpu};
use crate::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};
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

/// What the per-sample step time depends on: precision, attention and which stages are checkpointed.
type StepKey = (Precision, Attention, Vec<bool>);

pub struct ModelEvaluator<'a> {
    pub workload: &'a Workload,
    pub gpu: &'a TargetGpu,
    /// Rates for the step-time model.
    pub rates: &'static GpuSpec,
    pub coefficients: Coefficients,
    /// Step time of one sample of one micro-step, and the launches, per (precision, attention,
    /// checkpointing): the rest scales linearly with batch and accumulation.
    cache: RefCell<HashMap<StepKey, (f64, f64)>>,
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
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Predicted seconds per optimizer step.
    pub fn step_time(&self, k: &Knobs) -> f64 {
        let t = self.workload.trace(Mode::of(k.precision), k.attention);
        let key = (
            k.precision,
            k.attention,
            crate::memory::checkpoint_flags(t, k),
        );
        let unit = Knobs {
            batch: 1,
            grad_accum: 1,
            optimizer: k.optimizer,
            ..k.clone()
        };
        let (per_sample, launches) = *self.cache.borrow_mut().entry(key).or_insert_with(|| {
            let cost = step_cost(self.workload, &unit);
            let terms = self.coefficients.terms(&cost, &unit, self.rates);
            (terms.roofline, terms.launches)
        });
        let opt = step_cost_optimizer_bytes(self.workload, k) / (self.rates.bandwidth_gbs * 1e9);
        (k.batch * k.grad_accum) as f64 * per_sample
            + self.coefficients.launch * launches * k.grad_accum as f64
            + self.coefficients.optimizer * opt
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
    /// The search uses the closed-form reserved-memory model (microseconds per candidate).
    fn evaluate(&self, k: &Knobs) -> anyhow::Result<Evaluation> {
        let e = crate::memory::estimate_fast(self.workload, k, Some(self.gpu))?;
        Ok(Evaluation {
            peak_allocated_bytes: e.peak_allocated_bytes,
            peak_reserved_bytes: e.peak_reserved_bytes,
            device_total_bytes: e.device_total_bytes,
            step_time_s: self.step_time(k),
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
