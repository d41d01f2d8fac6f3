//! `oomdoc estimate`.
use crate::report::Ctx;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

pub fn run(_args: &Args, _ctx: &Ctx) -> anyhow::Result<u8> {
    anyhow::bail!("'estimate' is not implemented yet")
}
