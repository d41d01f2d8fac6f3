//! Memory of a training step: analytic components and the caching-allocator model.
//!
//! `estimate` walks one training step over the traced forward pass of the workload:
//! forward (saved tensors accumulate, temporaries come and go), backward (saved tensors are
//! released op by op while activation and parameter gradients appear; checkpointed blocks are
//! recomputed first), the optimizer step (state and its temporaries). Each point of that walk is
//! linear in the batch, so a profile is computed once per (precision, attention, checkpointing)
//! and reused for every batch size, optimizer and accumulation.
pub mod allocator;
mod free_set;
pub mod optimizer;
pub mod reduction;
pub mod report;
pub mod reserved;
pub mod sim;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::TargetGpu;
use crate::knobs::{Attention, Checkpointing, Knobs, Sharding};
use crate::model::graph::{Mode, Trace};
use crate::model::{module_matches, Workload};
use crate::units::MIB;

pub use sim::{Point, Profile};

type ProfileKey = (Mode, Attention, Vec<bool>);
/// (profile key, batch, accumulation, optimizer).
type ReplayKey = (
    Mode,
    Attention,
    Vec<bool>,
    u64,
    u64,
    crate::knobs::Optimizer,
    reduction::Device,
);

/// Profiles and allocator replays already computed for a workload.
#[derive(Debug, Default)]
pub struct ProfileCache {
    profiles: HashMap<ProfileKey, Arc<Profile>>,
    /// (peak reserved, peak allocated) of the allocator replay.
    replays: HashMap<ReplayKey, (u64, u64)>,
}

/// `plan` only calls a configuration safe, and `estimate` only says it fits without a warning,
/// when it still fits if the estimate is as low as the analytic model's largest under-estimate
/// of peak reserved memory on the calibration rows: -8.3% (NavDP-like bf16-mixed checkpointed
/// b12; `oomdoc validate tests/fixtures/calibration/measurements-h100-torch2.11.jsonl`,
/// docs/accuracy.md), where the real need is 1 / (1 - 0.083) = 1.091 times the estimate;
/// rounded up. `tests/validate_cli.rs` checks it against the file.
pub const ESTIMATOR_MARGIN: f64 = 0.10;

/// Whether `need` fits `capacity` with [`ESTIMATOR_MARGIN`] to spare.
pub fn fits_with_margin(need: u64, capacity: u64) -> bool {
    (need as f64) * (1.0 + ESTIMATOR_MARGIN) <= capacity as f64
}

/// How `peak_reserved_bytes` was obtained.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReservedModel {
    /// The step's allocations replayed through a model of the caching allocator.
    #[default]
    Replay,
    /// Closed form: peak + segment rounding of the live set + largest request (fast screening).
    ClosedForm,
}

/// cuBLAS + cuBLASLt workspaces, allocated through the caching allocator at the first matmul
/// and kept: measured 65-66 MiB (`a0` of the calibration rows, H100, torch 2.11 + CUDA 13).
pub const CUBLAS_WORKSPACE_BYTES: u64 = 65 * MIB;

/// Transient cuDNN workspace of a convolution's backward (dgrad / wgrad), as a multiple of the
/// larger of its input and output (gradient) in bytes. The forward's workspace (the H100 asks
/// for input + output + weight there too) is left out: modelled with this rule it moved more
/// calibration rows away from their measurements than towards them (`docs/accuracy.md`, "cuDNN
/// convolution workspaces in the H100 histories"). PyTorch allocates
/// the workspace cuDNN's heuristic engine asks for through the caching allocator and frees it
/// when the call returns (`aten/src/ATen/native/cudnn/Conv_v8.cpp`, `run_conv_plan`). The size
/// depends on the engine cuDNN picks on the GPU, so it is a measured figure: on the H100 (cuDNN 9,
/// torch 2.11) the checkpointed ResNet-18 rows, whose peak allocation falls inside a backward
/// convolution, need 2.07x (fp32/TF32) and 2.17x (bf16) on top of the other tensors to reach
/// their measured peak allocated. Shared by the analytic and the traced tier. Not measured on
/// depthwise or grouped convolutions (other engines).
pub const CONV_BWD_WORKSPACE_FACTOR: f64 = 2.1;

/// Memory outside PyTorch's allocator in a training process (CUDA context, loaded kernels of
/// torch/cuBLAS/cuDNN): device_used_after - reserved_after of the calibration rows is 0.75-0.77 GiB
/// on the H100 (CUDA 13); 0.527 GiB right after CUDA initialises. Older generations load fewer
/// kernels: ~0.5 GiB is typical of Ampere/Ada training processes in public OOM logs.
pub fn outside_pytorch_bytes(gpu: Option<&TargetGpu>) -> u64 {
    let cc = gpu.and_then(|g| g.spec).map(|s| s.compute_capability);
    match cc {
        Some((major, _)) if major < 9 => 512 * MIB,
        _ => 776 * MIB,
    }
}

/// The peak of one training step, by component (the JSON of `oomdoc estimate`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Estimate {
    /// `torch.cuda.max_memory_allocated()` over a step.
    pub peak_allocated_bytes: u64,
    /// `torch.cuda.max_memory_reserved()` over a step.
    pub peak_reserved_bytes: u64,
    /// Reserved + memory outside PyTorch: what the device must hold.
    pub device_total_bytes: u64,
    pub components: Components,
    /// Whether `device_total_bytes` fits the GPU's memory (only when a GPU is given).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fits: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gpu: Option<GpuFit>,
    pub workload: WorkloadSummary,
    /// Where the peak happens.
    pub peak_phase: Phase,
    /// Finer items of the components.
    pub details: Details,
}

/// Components at the peak; they add up to `device_total_bytes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Components {
    /// Weights and buffers.
    pub parameters: u64,
    /// `.grad` of trainable parameters alive at the peak.
    pub gradients: u64,
    pub optimizer_state: u64,
    /// Tensors autograd keeps for backward at the peak, and autocast's cached weight copies.
    pub activations: u64,
    /// Temporaries at the peak: activation gradients, recomputed blocks, loss and optimizer
    /// temporaries, kernel scratch.
    pub transient: u64,
    /// cuBLAS/cuBLASLt workspaces (and cuDNN workspace at the peak).
    pub workspace: u64,
    /// The input batch(es) of the step.
    pub batch: u64,
    /// CUDA context and libraries, outside PyTorch's allocator.
    pub outside_pytorch: u64,
    /// Reserved minus allocated: segment rounding and cached blocks that do not fit later requests.
    pub allocator_overhead: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Details {
    pub autocast_weight_cache: u64,
    pub activation_gradients: u64,
    pub saved_activations_end_of_forward: u64,
    /// Largest single allocation of the step (what fragmentation must make room for).
    pub largest_allocation: u64,
    pub optimizer_step_peak: u64,
    pub forward_peak: u64,
    pub backward_peak: u64,
    pub reserved_model: ReservedModel,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    Forward,
    Backward,
    OptimizerStep,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GpuFit {
    pub name: String,
    pub memory_bytes: u64,
    /// memory - device_total (negative: short by that much).
    pub headroom_bytes: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkloadSummary {
    pub name: String,
    pub source: String,
    pub params: u64,
    pub trainable_params: u64,
    pub knobs: Knobs,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_size: Option<u64>,
}

/// Which stages of the trace run under `torch.utils.checkpoint`.
pub fn checkpoint_flags(t: &Trace, knobs: &Knobs) -> Vec<bool> {
    t.stages
        .iter()
        .map(|s| match knobs.checkpointing {
            Checkpointing::None => false,
            Checkpointing::Full => s.repeated,
            Checkpointing::Selective => knobs
                .checkpoint_modules
                .iter()
                .any(|m| module_matches(m, &s.group) || module_matches(m, &s.path)),
        })
        .collect()
}

/// Per-sample bytes each stage saves for backward (no checkpointing).
pub fn saved_by_stage(t: &Trace) -> Vec<f64> {
    let mut out = vec![0.0; t.stages.len()];
    for ti in &t.tensors {
        if ti.base.is_some() || ti.producer == usize::MAX {
            continue;
        }
        if let Some(&first) = ti.savers.iter().min() {
            out[t.ops[first].stage] += ti.bytes();
        }
    }
    out
}

/// What an estimate needs that depends only on the precision mode, attention and checkpointing:
/// the trace, which of its stages are checkpointed, and the walk's profile. `estimate` prepares
/// it for each call; `plan` prepares it once per such group and evaluates every batch size,
/// accumulation, optimizer and sharding of the group against it ([`totals_fast`]).
#[derive(Clone, Debug)]
pub struct Prepared<'w> {
    pub trace: &'w Trace,
    /// `checkpoint_flags` of the knobs.
    pub flags: Vec<bool>,
    pub profile: Arc<Profile>,
}

/// The trace and profile of `knobs`' precision, attention and checkpointing (the profile is
/// walked once per workload and cached).
pub fn prepare<'w>(w: &'w Workload, knobs: &Knobs) -> Prepared<'w> {
    let mode = Mode::of(knobs.precision);
    let t = w.trace(mode, knobs.attention);
    let key = (mode, knobs.attention, checkpoint_flags(t, knobs));
    let cached = w
        .cache
        .lock()
        .ok()
        .and_then(|c| c.profiles.get(&key).cloned());
    let profile = match cached {
        Some(p) => p,
        None => {
            let p = Arc::new(sim::simulate(t, &key.2));
            if let Ok(mut c) = w.cache.lock() {
                c.profiles.insert(key.clone(), p.clone());
            }
            p
        }
    };
    Prepared {
        trace: t,
        flags: key.2,
        profile,
    }
}

/// The tensors alive around a forward/backward peak at batch `b`, (bytes, count), for the
/// closed-form reserved model (`reserved::Inputs::live`). Cleared and refilled.
pub fn live_set(prof: &Profile, batch: u64, out: &mut Vec<(u64, u32)>) {
    let b = batch as f64;
    out.clear();
    out.extend(prof.saved_sizes.iter().map(|&(s, n)| ((s * b) as u64, n)));
}

/// The peak allocation of one configuration, before reserved memory.
struct Peak {
    peak_alloc: u64,
    phase: Phase,
    /// The forward/backward point with the largest memory (default without points).
    best: Point,
    fwd_peak: f64,
    bwd_peak: f64,
    /// Parameters, optimizer state, input batches and cuBLAS workspace.
    common: f64,
    opt_step: f64,
    param_bytes: u64,
    grad_total: f64,
    opt_state: f64,
    batch_bytes: u64,
    step_temp: f64,
    pbytes: f64,
    p_shard: f64,
    g_shard: f64,
}

/// The largest gradient accumulation estimated: the replay runs every micro-batch of two
/// steps, so its time grows with it.
pub const MAX_GRAD_ACCUM: u64 = 1024;

/// The largest peak an estimate reports: far above any device, and far enough below 2^64 that
/// adding the components cannot wrap around.
const MAX_BYTES: u64 = 1 << 60;

fn check_knobs(knobs: &Knobs) -> Result<()> {
    if knobs.batch == 0 || knobs.grad_accum == 0 {
        return Err(Error::input("--batch and --grad-accum must be at least 1"));
    }
    let max_batch = crate::model::limits::MAX_COUNT;
    if knobs.batch > max_batch {
        return Err(Error::input(format!(
            "--batch must be at most {max_batch} (is {})",
            knobs.batch
        )));
    }
    if knobs.grad_accum > MAX_GRAD_ACCUM {
        return Err(Error::input(format!(
            "--grad-accum must be at most {MAX_GRAD_ACCUM} (is {})",
            knobs.grad_accum
        )));
    }
    Ok(())
}

/// Refuses a peak too large to add up in bytes (it would need more than an exbibyte).
fn check_peak(pk: &Peak) -> Result<()> {
    if pk.peak_alloc >= MAX_BYTES {
        return Err(Error::input(
            "this configuration would need more than 1 EiB of GPU memory: check the model's sizes, --batch and --seq-len",
        ));
    }
    Ok(())
}

/// The device the reduction buffers are sized for: the target GPU, else the calibration card.
fn reduction_device(gpu: Option<&TargetGpu>) -> reduction::Device {
    gpu.map_or(reduction::CALIBRATION_DEVICE, |g| g.reduction_device())
}

fn peak(
    w: &Workload,
    prep: &Prepared,
    knobs: &Knobs,
    opt: &optimizer::OptimizerMemory,
    dev: reduction::Device,
) -> Peak {
    let prof = &*prep.profile;
    let t = prep.trace;
    let mode = t.mode;
    let pbytes = mode.param_dt().bytes();
    let b = knobs.batch as f64;
    let accum = knobs.grad_accum;
    let gpus = knobs.gpus.max(1) as f64;

    // parameters, gradients, optimizer (sharded by ZeRO/FSDP over the data-parallel group)
    let (p_shard, g_shard, o_shard) = match knobs.sharding {
        Sharding::None => (1.0, 1.0, 1.0),
        Sharding::Zero1 => (1.0, 1.0, gpus),
        Sharding::Zero2 => (1.0, gpus, gpus),
        Sharding::Zero3 | Sharding::Fsdp => (gpus, gpus, gpus),
    };
    let param_bytes = (w.params as f64 * pbytes / p_shard) as u64 + w.buffer_bytes;
    let grad_total = prof.pgrad_total * pbytes / g_shard;
    let opt_state = opt.state_bytes / o_shard;
    let batch_bytes = (t.input_bytes * b) as u64 * accum;

    // fwd/bwd points: act*b + casts + grads; pick the largest
    let mut best_v = f64::MIN;
    let mut best: Option<&Point> = None;
    let mut fwd_peak = 0.0f64;
    let mut bwd_peak = 0.0f64;
    for p in &prof.points {
        let grads = if accum > 1 {
            grad_total
        } else {
            p.pgrad * pbytes / g_shard
        };
        // ZeRO-3 / FSDP gather each layer's weights for its use only: their autocast copies are
        // not cached leaves (views of a flat parameter), so only a layer's worth lives at a time
        let row_sum = p
            .row_sum
            .map_or(0, |(cols, rows)| reduction::row_sum_at(cols, rows, b, dev));
        let v = (p.saved + p.transient) * b + p.casts / p_shard + grads + row_sum as f64;
        if p.phase == Phase::Forward {
            fwd_peak = fwd_peak.max(v);
        } else {
            bwd_peak = bwd_peak.max(v);
        }
        if v > best_v {
            best_v = v;
            best = Some(p);
        }
    }
    let best = best.cloned().unwrap_or_default();
    let common =
        param_bytes as f64 + opt_state + batch_bytes as f64 + CUBLAS_WORKSPACE_BYTES as f64;
    let step_temp = opt.step_temp_bytes / o_shard;
    let opt_step = grad_total + step_temp;
    let (peak_alloc, phase) = if opt_step > best_v {
        (common + opt_step, Phase::OptimizerStep)
    } else {
        (common + best_v, best.phase)
    };
    Peak {
        peak_alloc: peak_alloc.max(0.0) as u64,
        phase,
        best,
        fwd_peak,
        bwd_peak,
        common,
        opt_step,
        param_bytes,
        grad_total,
        opt_state,
        batch_bytes,
        step_temp,
        pbytes,
        p_shard,
        g_shard,
    }
}

/// Reserved bytes from the closed form (`reserved::reserved`); `live` is `live_set` at the batch.
fn closed_form(prof: &Profile, knobs: &Knobs, pk: &Peak, live: &[(u64, u32)]) -> u64 {
    let b = knobs.batch as f64;
    reserved::reserved(&reserved::Inputs {
        peak_allocated: pk.peak_alloc,
        largest_allocation: (prof.largest_alloc * b) as u64,
        live: if pk.phase == Phase::OptimizerStep {
            &[]
        } else {
            live
        },
        conv_workspace_max: (prof.conv_workspace_max * b) as u64,
        freed_small: if pk.phase == Phase::Backward {
            (prof.casts_total - pk.best.casts).max(0.0) as u64
        } else {
            0
        },
    })
}

/// The three totals of [`estimate_fast`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    pub peak_allocated_bytes: u64,
    pub peak_reserved_bytes: u64,
    pub device_total_bytes: u64,
}

/// `estimate_fast`'s totals for `knobs` against `prep` (prepared for the same precision,
/// attention and checkpointing), without building the report: the same arithmetic, for
/// searching many configurations. `opt` is `optimizer::optimizer_memory` of the trace's
/// parameters for `knobs.optimizer`; `live` is `live_set` of the profile at `knobs.batch`.
pub fn totals_fast(
    w: &Workload,
    prep: &Prepared,
    knobs: &Knobs,
    gpu: Option<&TargetGpu>,
    opt: &optimizer::OptimizerMemory,
    live: &[(u64, u32)],
) -> Result<Totals> {
    check_knobs(knobs)?;
    let pk = peak(w, prep, knobs, opt, reduction_device(gpu));
    check_peak(&pk)?;
    let reserved = closed_form(&prep.profile, knobs, &pk, live);
    Ok(Totals {
        peak_allocated_bytes: pk.peak_alloc,
        peak_reserved_bytes: reserved,
        device_total_bytes: reserved + outside_pytorch_bytes(gpu),
    })
}

/// Peak memory of one training step of `w` with `knobs` (reserved memory from the allocator
/// replay: a few milliseconds for a large model, cached per configuration).
pub fn estimate(w: &Workload, knobs: &Knobs) -> Result<Estimate> {
    estimate_with(w, knobs, None, ReservedModel::Replay)
}

/// `estimate` with a target GPU (sets `fits` and the context size of that generation).
pub fn estimate_on(w: &Workload, knobs: &Knobs, gpu: Option<&TargetGpu>) -> Result<Estimate> {
    estimate_with(w, knobs, gpu, ReservedModel::Replay)
}

/// The same with reserved memory from the closed form (~20 us once the profile is cached):
/// for searching many configurations; check the chosen ones with `estimate_on`.
pub fn estimate_fast(w: &Workload, knobs: &Knobs, gpu: Option<&TargetGpu>) -> Result<Estimate> {
    estimate_with(w, knobs, gpu, ReservedModel::ClosedForm)
}

/// The allocator replay of `knobs` (peak reserved, peak allocated), cached per configuration.
fn replay_cached(
    w: &Workload,
    prep: &Prepared,
    knobs: &Knobs,
    pk: &Peak,
    dev: reduction::Device,
) -> (u64, u64) {
    let t = prep.trace;
    let key = (
        t.mode,
        knobs.attention,
        prep.flags.clone(),
        knobs.batch,
        knobs.grad_accum,
        knobs.optimizer,
        dev,
    );
    if let Some(r) = w
        .cache
        .lock()
        .ok()
        .and_then(|c| c.replays.get(&key).copied())
    {
        return r;
    }
    let r = reserved::replay(
        &prep.profile,
        &reserved::Replay {
            batch: knobs.batch,
            grad_accum: knobs.grad_accum,
            params: &t.params,
            param_bytes: pk.pbytes,
            buffer_bytes: w.buffer_bytes,
            input_bytes_per_sample: t.input_bytes,
            optimizer: knobs.optimizer,
            cublas_workspace: CUBLAS_WORKSPACE_BYTES,
            device: dev,
        },
    );
    if let Ok(mut c) = w.cache.lock() {
        c.replays.insert(key, r);
    }
    r
}

pub fn estimate_with(
    w: &Workload,
    knobs: &Knobs,
    gpu: Option<&TargetGpu>,
    model: ReservedModel,
) -> Result<Estimate> {
    check_knobs(knobs)?;
    let prep = prepare(w, knobs);
    let prof = &*prep.profile;
    let t = prep.trace;
    let mode = t.mode;
    let b = knobs.batch as f64;
    let accum = knobs.grad_accum;
    let opt = optimizer::optimizer_memory(&t.params, knobs.optimizer, mode);
    let dev = reduction_device(gpu);
    let pk = peak(w, &prep, knobs, &opt, dev);
    check_peak(&pk)?;
    // The replay of one unsharded process gives peak reserved and, counted in allocator blocks
    // as `max_memory_allocated()` counts them (a large block keeps a tail of up to 1 MiB that is
    // not split off), peak allocated. Sharded setups keep the closed forms.
    let replayed = (model == ReservedModel::Replay && knobs.sharding == Sharding::None)
        .then(|| replay_cached(w, &prep, knobs, &pk, dev));
    let peak_alloc = replayed.map_or(pk.peak_alloc, |(_, a)| a.max(pk.peak_alloc));
    let phase = pk.phase;

    let mut c = Components {
        parameters: pk.param_bytes,
        optimizer_state: pk.opt_state as u64,
        batch: pk.batch_bytes,
        workspace: CUBLAS_WORKSPACE_BYTES,
        ..Default::default()
    };
    if phase == Phase::OptimizerStep {
        c.gradients = pk.grad_total as u64;
        c.transient = pk.step_temp as u64;
    } else {
        let p = &pk.best;
        c.gradients = if accum > 1 {
            pk.grad_total
        } else {
            p.pgrad * pk.pbytes / pk.g_shard
        } as u64;
        c.activations = (p.saved * b + p.casts / pk.p_shard) as u64;
        c.transient = (p.transient * b) as u64;
    }
    let alloc_sum = c.parameters
        + c.gradients
        + c.optimizer_state
        + c.activations
        + c.transient
        + c.workspace
        + c.batch;
    // rounding differences go to transient so that the parts add up
    if alloc_sum < peak_alloc {
        c.transient += peak_alloc - alloc_sum;
    }
    let largest = (prof.largest_alloc * b) as u64;
    let reserved = match replayed {
        Some((r, _)) => r.max(peak_alloc),
        None => {
            // the closed form needs the live set around the peak; the replay does not
            let mut live = Vec::new();
            if phase != Phase::OptimizerStep {
                live_set(prof, knobs.batch, &mut live);
            }
            closed_form(prof, knobs, &pk, &live)
        }
    };
    c.allocator_overhead = reserved.saturating_sub(peak_alloc);
    c.outside_pytorch = outside_pytorch_bytes(gpu);
    let device_total = reserved + c.outside_pytorch;
    let gpu_fit = gpu.map(|g| GpuFit {
        name: g.name.clone(),
        memory_bytes: g.memory_bytes,
        headroom_bytes: g.memory_bytes as i64 - device_total as i64,
    });
    let (seq_len, image_size) = match &w.arch {
        crate::model::arch::Arch::Lm(_) | crate::model::arch::Arch::T5(_) => {
            (Some(w.shape.seq_len), None)
        }
        _ => (None, Some(w.shape.image)),
    };
    Ok(Estimate {
        peak_allocated_bytes: peak_alloc,
        peak_reserved_bytes: reserved,
        device_total_bytes: device_total,
        components: c,
        fits: gpu.map(|g| device_total <= g.memory_bytes),
        gpu: gpu_fit,
        workload: WorkloadSummary {
            name: w.name.clone(),
            source: w.source.clone(),
            params: w.params,
            trainable_params: w.trainable_params,
            knobs: knobs.clone(),
            seq_len,
            image_size,
        },
        peak_phase: phase,
        details: Details {
            autocast_weight_cache: prof.casts_total as u64,
            activation_gradients: (pk.best.act_grads * b) as u64,
            saved_activations_end_of_forward: (prof.saved_end * b) as u64,
            largest_allocation: largest,
            optimizer_step_peak: (pk.common + pk.opt_step) as u64,
            forward_peak: (pk.common + pk.fwd_peak) as u64,
            backward_peak: (pk.common + pk.bwd_peak) as u64,
            reserved_model: model,
        },
    })
}
