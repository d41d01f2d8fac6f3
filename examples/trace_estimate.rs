//! Estimate from a trace with the library API, as JSON (until `oomdoc estimate --model trace:PATH`).
//!
//! `cargo run --example trace_estimate -- TRACE [knob flags, e.g. --batch 16 --precision bf16-mixed]`
//!
//! With `--events`, prints instead the allocation events the estimate replays, one per line
//! (`A bytes step phase op module #key` / `F bytes #key`), for comparing with a real allocator history
//! (`scripts/gpu-measure.py --parts history`).
use std::collections::HashMap;
use std::io::Write;

use clap::Parser;
use oomdoc::knobs::{Attention, KnobArgs, KnobDefaults};
use oomdoc::model::trace::{self, EstimateOptions};

#[derive(Parser)]
struct Cli {
    trace: std::path::PathBuf,
    /// Print the replayed allocation events instead of the estimate.
    #[arg(long)]
    events: bool,
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
    if !cli.events {
        let e = trace::estimate(&t, &knobs)?;
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    let mut size: HashMap<u64, u64> = HashMap::new();
    let mut out = std::io::stdout().lock();
    for e in trace::replayed_events(&t, &knobs, &EstimateOptions::default())? {
        if e.alloc {
            size.insert(e.key, e.bytes);
            let (b, s, p) = (e.bytes, e.step, e.phase);
            writeln!(out, "A {b} {s} {p:?} {} {} #{}", e.op, e.module, e.key)?;
        } else {
            writeln!(out, "F {} #{}", size.remove(&e.key).unwrap_or(0), e.key)?;
        }
    }
    Ok(())
}
