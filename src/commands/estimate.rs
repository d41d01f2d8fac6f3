//! `oomdoc estimate`.
use std::path::Path;

use crate::gpu::GpuArgs;
use crate::knobs::KnobArgs;
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
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let gpu = args.gpu.resolve()?;
    if let Some(path) = args.model.strip_prefix("trace:") {
        // The traced tier: replay the probe's trace through the allocator simulation.
        let (e, t) =
            crate::model::trace::estimate_file(Path::new(path), &args.knobs, gpu.as_ref())?;
        ctx.emit(&e, |lang| {
            let mut d = crate::memory::report::document(&e, lang);
            let notes: Vec<String> = t
                .transformed
                .iter()
                .chain(t.notes.iter())
                .cloned()
                .collect();
            if !notes.is_empty() {
                d.bullets(notes);
            }
            d
        })?;
        return Ok(if e.fits == Some(false) { 1 } else { 0 });
    }
    let w = crate::model::resolve(&args.model, Path::new("."), &args.knobs)?;
    let k = w.resolve_knobs(&args.knobs)?;
    let e = crate::memory::estimate_on(&w, &k, gpu.as_ref())?;
    ctx.emit(&e, |lang| crate::memory::report::document(&e, lang))?;
    Ok(if e.fits == Some(false) { 1 } else { 0 })
}
