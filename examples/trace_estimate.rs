//! Estimate from a trace with the library API, as JSON (until `oomdoc estimate --model trace:PATH`).
//!
//! `cargo run --example trace_estimate -- TRACE [knob flags, e.g. --batch 16 --precision bf16-mixed]`
use clap::Parser;
use oomdoc::knobs::{Attention, KnobArgs, KnobDefaults};
use oomdoc::model::trace;

#[derive(Parser)]
struct Cli {
    trace: std::path::PathBuf,
    #[command(flatten)]
    knobs: KnobArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let t = trace::load(&cli.trace)?;
    let defaults = KnobDefaults {
        batch: t.steady_runs().first().map_or(1, |r| r.batch),
        attention: Attention::Sdpa,
    };
    let knobs = cli.knobs.resolve(&defaults)?;
    let e = trace::estimate(&t, &knobs)?;
    println!("{}", serde_json::to_string_pretty(&e)?);
    Ok(())
}
