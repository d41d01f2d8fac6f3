//! `oomdoc plan`: search the knobs for a model on a GPU and write the whole analysis.
use std::path::{Path, PathBuf};

use crate::gpu::GpuArgs;
use crate::knobs::KnobArgs;
use crate::plan::analysis::{self, Component, GpuSummary, HostMemory, ModelSummary};
use crate::plan::model_eval::{search_space, ModelEvaluator};
use crate::report::Ctx;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The model: preset:NAME, hf:PATH/config.json, safetensors:PATH, trace:PATH or a .toml workload.
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub knobs: Box<KnobArgs>,
    #[command(flatten)]
    pub gpu: Box<GpuArgs>,
    /// The training log with the out-of-memory error, for the "current state" section.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Also consider smaller effective batches (they need a learning-rate change).
    #[arg(long)]
    pub allow_batch_change: bool,
    /// DataLoader workers, for the host-memory section.
    #[arg(long)]
    pub num_workers: Option<u64>,
    /// DataLoader prefetch_factor (PyTorch's default is 2).
    #[arg(long, default_value_t = 2)]
    pub prefetch_factor: u64,
    /// DataLoader pin_memory.
    #[arg(long)]
    pub pin_memory: bool,
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let log = match &args.log {
        Some(path) => Some(crate::plan::log::read(path)?),
        None => None,
    };
    // The target GPU: the flags, else what the log says the process could use.
    let from_log = log
        .as_ref()
        .and_then(|l| l.as_ref())
        .and_then(|s| s.usable_bytes());
    let gpu = match (args.gpu.resolve()?, from_log) {
        (Some(g), _) => g,
        (None, Some(0)) => anyhow::bail!(
            "the log's out-of-memory message gives the GPU no usable memory (0 bytes): give --gpu NAME or --gpu-memory SIZE"
        ),
        (None, Some(bytes)) => crate::gpu::TargetGpu {
            name: "the GPU of the log".into(),
            memory_bytes: bytes,
            spec: None,
        },
        (None, None) => anyhow::bail!(
            "plan needs a target GPU: --gpu NAME (see `oomdoc gpu --list`), --gpu-memory SIZE, or --log with a CUDA OOM message"
        ),
    };
    let host = |batch_bytes: u64| {
        args.num_workers
            .map(|n| HostMemory::new(n, args.prefetch_factor, args.pin_memory, batch_bytes))
    };
    let mut plan = compute(
        &args.model,
        &args.knobs,
        &gpu,
        args.allow_batch_change,
        host,
    )?;
    if let Some(state) = log {
        plan.log_without_event = state.is_none();
        plan.log = state;
    }
    ctx.emit(&plan, |lang| crate::plan::report::document(&plan, lang))?;
    Ok(if plan.nothing_fits { 1 } else { 0 })
}

/// Resolves the model, searches the knobs on `gpu` and assembles the plan (without the log's
/// state); `host` gives the DataLoader figures from the batch's bytes. `fix --model` uses it too.
pub fn compute(
    model_spec: &str,
    knobs: &KnobArgs,
    gpu: &crate::gpu::TargetGpu,
    allow_batch_change: bool,
    host: impl FnOnce(u64) -> Option<HostMemory>,
) -> anyhow::Result<crate::plan::analysis::Plan> {
    let w = crate::model::resolve(model_spec, Path::new("."), knobs)?;
    let base = w.resolve_knobs(knobs)?;
    // Step-time rates: the named GPU's; with only --gpu-memory, the H100's (speeds stay relative).
    let rates = match gpu.spec {
        Some(s) => s,
        None => crate::gpu::lookup("h100")?,
    };
    let eval = ModelEvaluator::new(&w, gpu, rates, crate::plan::calibrate::FITTED);
    let space = search_space(&w, &base, gpu.spec, allow_batch_change);
    let est = crate::memory::estimate_on(&w, &base, Some(gpu))?;
    let c = &est.components;
    let components = [
        ("parameters", c.parameters),
        ("gradients", c.gradients),
        ("optimizer_state", c.optimizer_state),
        ("activations", c.activations),
        ("transient", c.transient),
        ("workspace", c.workspace),
        ("batch", c.batch),
        ("outside_pytorch", c.outside_pytorch),
        ("allocator_overhead", c.allocator_overhead),
    ]
    .into_iter()
    .map(|(n, b)| Component {
        name: n.into(),
        bytes: b,
    })
    .collect();
    // The batch component counts every micro-batch of the step; one sample's input is a share of it.
    let input_bytes_per_sample = est.components.batch / (base.batch * base.grad_accum).max(1);
    let host = host(input_bytes_per_sample * base.batch);
    let gpu_summary = GpuSummary {
        name: gpu.name.clone(),
        memory_bytes: gpu.memory_bytes,
        bf16: gpu.spec.map(|s| s.bf16),
        compute_capability: gpu.spec.map(|s| s.compute_capability),
    };
    let model = ModelSummary {
        name: w.name.clone(),
        params: w.params,
        trainable_params: w.trainable_params,
        input_bytes_per_sample,
    };
    analysis::build(&eval, &base, &space, gpu_summary, model, components, host)
}
