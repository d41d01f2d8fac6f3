//! The traced tier's replayed allocation events, one per line (`A bytes step phase op module` /
//! `F bytes`), for comparing with a real allocator trace (`scripts/gpu-measure.py --parts history`).
//!
//! `cargo run --release --example trace_events -- TRACE --batch 16 --precision bf16-mixed`
use std::collections::HashMap;

use clap::Parser;
use oomdoc::knobs::{Attention, KnobArgs, KnobDefaults};
use oomdoc::model::trace::{self, EstimateOptions};

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
    let events = trace::replayed_events(&t, &knobs, &EstimateOptions::default())?;
    let mut size: HashMap<u64, u64> = HashMap::new();
    for e in events {
        if e.alloc {
            size.insert(e.key, e.bytes);
            println!(
                "A {} {} {:?} {} {}",
                e.bytes, e.step, e.phase, e.op, e.module
            );
        } else {
            println!("F {}", size.remove(&e.key).unwrap_or(0));
        }
    }
    Ok(())
}
