//! `oomdoc snapshot FILE`: what filled the GPU in a PyTorch memory snapshot.
use std::path::PathBuf;

use crate::report::{Ctx, Format};
use crate::snapshot;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Snapshot file from `torch.cuda.memory._dump_snapshot()` (pickle, optionally gzip-compressed).
    pub file: PathBuf,
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let snap = snapshot::load(&args.file)?;
    let analysis = snapshot::analyse(&snap);
    drop(snap);
    let name = args.file.display().to_string();
    if ctx.format == Format::Html {
        let page = snapshot::html::page(&analysis, &name, ctx.lang);
        ctx.write(page.as_bytes())?;
        return Ok(0);
    }
    ctx.emit(&analysis, |lang| {
        snapshot::report::document(&analysis, &name, lang)
    })?;
    Ok(0)
}
