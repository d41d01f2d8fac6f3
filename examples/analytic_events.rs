//! The analytic tier's allocation events of one training step, one per line (`A size` / `F size`,
//! `G size` for a parameter gradient, `E` at the end of forward; reduction buffers sized for the
//! calibration card), for comparing with a real allocator trace (`scripts/gpu-measure.py`).
//!
//! `cargo run --release --example analytic_events -- --model preset:vit-b16 --batch 64 --precision bf16-mixed`
use clap::Parser;
use oomdoc::knobs::KnobArgs;
use oomdoc::memory::reduction::{row_sum_buffer, CALIBRATION_DEVICE};
use oomdoc::memory::sim::Ev;

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    model: String,
    #[command(flatten)]
    knobs: KnobArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let w = oomdoc::model::resolve(&cli.model, std::path::Path::new("."), &cli.knobs)?;
    let k = w.resolve_knobs(&cli.knobs)?;
    let p = oomdoc::memory::prepare(&w, &k);
    let b = k.batch as f64;
    let mut size = vec![0u64; p.profile.slots];
    for e in &p.profile.events {
        match *e {
            Ev::Alloc {
                slot,
                per_sample,
                abs,
            } => {
                let s = (per_sample * b + abs).max(1.0) as u64;
                size[slot as usize] = s;
                println!("A {s}");
            }
            Ev::Free { slot } => println!("F {}", size[slot as usize]),
            Ev::ParamGrad { slot, abs } => {
                size[slot as usize] = abs as u64;
                println!("G {}", abs as u64)
            }
            Ev::RowSum {
                slot,
                cols,
                rows_per_sample,
            } => {
                let rows = (rows_per_sample * b).round() as u64;
                let s = row_sum_buffer(cols, rows, CALIBRATION_DEVICE);
                size[slot as usize] = s;
                if s > 0 {
                    println!("A {s}");
                }
            }
            Ev::EndForward => println!("E"),
        }
    }
    Ok(())
}
