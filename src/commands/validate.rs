//! `oomdoc validate`.
use std::path::PathBuf;

use crate::report::Ctx;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A measurement file: one JSON object per line with `estimate_args`, `peak_alloc`, `peak_reserved`.
    pub file: PathBuf,
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let v = crate::memory::validate::validate_file(&args.file)?;
    ctx.emit(&v, |lang| crate::memory::validate::document(&v, lang))?;
    Ok(0)
}
