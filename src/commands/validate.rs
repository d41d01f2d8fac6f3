//! `oomdoc validate`.
use std::path::PathBuf;

use crate::report::Ctx;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A measurement file: one JSON object per line with `estimate_args`, `peak_alloc`, `peak_reserved`.
    pub file: PathBuf,
    /// How reserved memory is estimated: the allocator replay (default) or the closed form that
    /// fast searches use.
    #[arg(long, value_enum, default_value = "replay")]
    pub reserved_model: ReservedModelArg,
    /// Step time instead of memory: the plan's step-time model (its fitted coefficients) against
    /// the measured `step_time_s` of each row, on the file's GPU (`--gpu`, default the H100).
    #[arg(long)]
    pub speed: bool,
    /// The GPU the file was measured on (catalogue name), for --speed.
    #[arg(long, default_value = "h100")]
    pub gpu: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ReservedModelArg {
    Replay,
    ClosedForm,
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    if args.speed {
        let v = crate::plan::calibrate::speed_validation(&args.file, &args.gpu)?;
        ctx.emit(&v, |lang| crate::plan::calibrate::document(&v, lang))?;
        return Ok(0);
    }
    let model = match args.reserved_model {
        ReservedModelArg::Replay => crate::memory::ReservedModel::Replay,
        ReservedModelArg::ClosedForm => crate::memory::ReservedModel::ClosedForm,
    };
    let v = crate::memory::validate::validate_file_with(&args.file, model)?;
    ctx.emit(&v, |lang| crate::memory::validate::document(&v, lang))?;
    Ok(0)
}
