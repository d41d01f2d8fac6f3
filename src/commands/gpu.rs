//! `oomdoc gpu`: the local GPUs through NVML, or the built-in catalogue with `--list`.
use crate::gpu::{self, nvml, report};
use crate::report::Ctx;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Show the built-in catalogue (the names --gpu accepts) instead of the local GPUs.
    #[arg(long)]
    pub list: bool,
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    if args.list {
        let data = report::CatalogueJson {
            catalogue: gpu::CATALOGUE,
        };
        ctx.emit(&data, |lang| report::catalogue_doc(gpu::CATALOGUE, lang))?;
        return Ok(0);
    }
    let r = nvml::query();
    ctx.emit(&r, |lang| report::local_doc(&r, lang))?;
    Ok(0)
}
