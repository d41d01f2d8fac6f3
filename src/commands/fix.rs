//! `oomdoc fix DIR [knobs]`: a patch that puts each requested setting where it takes effect in
//! that project; a preview diff by default, `--apply` writes it.
use std::path::PathBuf;

use serde::Serialize;

use crate::error::Error;
use crate::fix::{self, apply::Applied, DataLoaderOpts, Patch, Target};
use crate::knobs::KnobArgs;
use crate::report::Ctx;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The training project's directory.
    pub dir: PathBuf,
    #[command(flatten)]
    pub knobs: Box<KnobArgs>,
    /// DataLoader worker processes.
    #[arg(long)]
    pub num_workers: Option<u64>,
    /// DataLoader pin_memory (true|false).
    #[arg(long, value_name = "BOOL")]
    pub pin_memory: Option<bool>,
    /// DataLoader persistent_workers (true|false).
    #[arg(long, value_name = "BOOL")]
    pub persistent_workers: Option<bool>,
    /// Value for PYTORCH_CUDA_ALLOC_CONF, e.g. expandable_segments:True.
    #[arg(long, value_name = "CONF")]
    pub alloc_conf: Option<String>,
    /// Target GPU from the catalogue (bf16 becomes fp16 where it has no bf16).
    #[arg(long)]
    pub gpu: Option<String>,
    /// Take the change from the plan: the knob flags then describe the current configuration of
    /// this model (preset:NAME, hf:config.json, ...), and the plan's recommended combination on
    /// --gpu is what gets written.
    #[arg(long)]
    pub model: Option<String>,
    /// Write the changes (a backup of each file is kept as FILE.orig).
    #[arg(long)]
    pub apply: bool,
    /// With --apply: write even where git reports uncommitted changes in those files.
    #[arg(long)]
    pub force: bool,
    /// Print only the unified diff (for `git apply` / `patch -p1`).
    #[arg(long)]
    pub patch: bool,
}

/// JSON output: the patch, and what was written with --apply.
#[derive(Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    patch: &'a Patch,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<&'a Applied>,
}

/// The target of `fix` from its flags.
pub fn target(args: &Args) -> anyhow::Result<Target> {
    let k = &args.knobs;
    if let Some(model) = &args.model {
        return target_from_plan(args, model);
    }
    let unused: Vec<&str> = [
        ("--seq-len", k.seq_len.is_some()),
        ("--target-len", k.target_len.is_some()),
        ("--image-size", k.image_size.is_some()),
        ("--num-classes", k.num_classes.is_some()),
        ("--task", k.task.is_some()),
        ("--lora-rank", k.lora_rank.is_some()),
        ("--lora-targets", !k.lora_targets.is_empty()),
        ("--gpus", k.gpus.is_some()),
        ("--sharding", k.sharding.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(n, _)| n)
    .collect();
    if !unused.is_empty() {
        return Err(Error::input(format!(
            "{} describe(s) the workload for estimate/plan; fix does not change them",
            unused.join(", ")
        ))
        .into());
    }
    let t = Target::from_knob_args(k)?;
    finish_target(args, t)
}

/// `fix --model M --gpu G`: the plan's recommended combination, relative to the configuration the
/// knob flags describe.
fn target_from_plan(args: &Args, model: &str) -> anyhow::Result<Target> {
    let Some(name) = &args.gpu else {
        return Err(
            Error::input("fix --model needs --gpu NAME: the plan is made for that GPU").into(),
        );
    };
    let spec = crate::gpu::lookup(name)?;
    let gpu = crate::gpu::TargetGpu {
        name: spec.name.to_string(),
        memory_bytes: spec.memory_bytes,
        spec: Some(spec),
    };
    let plan = crate::commands::plan::compute(model, &args.knobs, &gpu, false, |_| None)?;
    let Some(best) = &plan.combinations.balanced else {
        return Err(Error::input(format!(
            "no configuration of {model} fits {} (see `oomdoc plan --model {model} --gpu {name}`)",
            spec.name
        ))
        .into());
    };
    let t = Target::from_plan(&best.knobs, &plan.baseline.knobs);
    finish_target(args, t)
}

/// The DataLoader, allocator and GPU options, common to both ways of giving the target.
fn finish_target(args: &Args, mut t: Target) -> anyhow::Result<Target> {
    t.dataloader = DataLoaderOpts {
        num_workers: args.num_workers,
        pin_memory: args.pin_memory,
        persistent_workers: args.persistent_workers,
    };
    if let Some(c) = &args.alloc_conf {
        if c.trim().is_empty() || c.contains(char::is_whitespace) {
            return Err(Error::input(format!(
                "--alloc-conf {c:?}: expected e.g. expandable_segments:True"
            ))
            .into());
        }
        t.alloc_conf = Some(c.clone());
    }
    if let Some(g) = &args.gpu {
        t = t.with_gpu(g)?;
    }
    Ok(t)
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let t = target(args)?;
    let patch = fix::analyze(&args.dir, &t)?;
    let applied = if args.apply {
        Some(fix::apply::apply(&args.dir, &patch, args.force)?)
    } else {
        None
    };
    if args.patch {
        ctx.write(patch.unified_diff().as_bytes())?;
        return Ok(0);
    }
    let out = Output {
        patch: &patch,
        applied: applied.as_ref(),
    };
    ctx.emit(&out, |lang| {
        fix::report::document(&patch, applied.as_ref(), lang)
    })?;
    Ok(0)
}
