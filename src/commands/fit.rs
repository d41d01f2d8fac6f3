//! `oomdoc fit`.
use crate::report::Ctx;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

pub fn run(_args: &Args, _ctx: &Ctx) -> anyhow::Result<u8> {
    anyhow::bail!("'fit' is not implemented yet")
}
