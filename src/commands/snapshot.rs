//! `oomdoc snapshot FILE`: what filled the GPU in a PyTorch memory snapshot.
use std::path::PathBuf;

use crate::report::{Ctx, Format};
use crate::snapshot;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Snapshot file from `torch.cuda.memory._dump_snapshot()` (pickle, optionally gzip-compressed).
    pub file: PathBuf,
    /// Directory holding the training code, to quote the allocating lines and name their classes
    /// (looked up by path suffix; repeatable). The recorded paths are tried first.
    #[arg(long = "source", value_name = "DIR")]
    pub source: Vec<PathBuf>,
    /// Do not read any source file (not even at the paths recorded in the snapshot).
    #[arg(long)]
    pub no_source: bool,
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let snap = snapshot::load(&args.file)?;
    let mut analysis = snapshot::analyse(&snap);
    // The process ends after the report: freeing the typed snapshot (millions of trace entries)
    // would only cost time, not lower the peak.
    std::mem::forget(snap);
    if !args.no_source {
        let mut src = snapshot::source::Sources::new(args.source.clone(), true);
        snapshot::source::annotate(&mut analysis, &mut src);
    }
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
