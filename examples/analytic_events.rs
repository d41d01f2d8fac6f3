//! The analytic tier's allocation events of one training step, one per line (`A size` / `F size`,
//! `G size` for a parameter gradient, `E` at the end of forward; reduction buffers sized for the
//! calibration card), for comparing with a real allocator trace (`scripts/gpu-measure.py`).
//!
//! `cargo run --release --example analytic_events -- --model preset:vit-b16 --batch 64 --precision bf16-mixed`
use clap::Parser;
use oomdoc::knobs::KnobArgs;
use oomdoc::memory::reduction::CALIBRATION_DEVICE;
use oomdoc::memory::reserved::Allocator;
use oomdoc::memory::sim::{SizedEv, Slot};

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    model: String,
    /// Also replay the events (two steps, without parameters and optimizer state) through the
    /// caching-allocator model and print each new segment as `S size` after the event that made it.
    #[arg(long)]
    segments: bool,
    #[command(flatten)]
    knobs: KnobArgs,
}

/// What an event slot stands for (`memory::sim::Slot`), with the module path of the op that made
/// it.
fn label(t: &oomdoc::model::graph::Trace, slot: usize) -> String {
    let (kind, op) = match Slot::of(slot as u32, t.tensors.len(), t.ops.len()) {
        Slot::Tensor(j) => ("out", t.tensors[j].producer),
        Slot::Grad(j) => ("grad", t.tensors[j].producer),
        Slot::Cast(i) => ("cast", i),
        Slot::ParamGrad(i) => ("pgrad", i),
        Slot::Workspace(i) => ("extra", i),
    };
    let stage = t
        .ops
        .get(op)
        .and_then(|o| t.stages.get(o.stage))
        .map_or("-", |s| s.path.as_str());
    format!("{kind} op{op} {stage}")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let w = oomdoc::model::resolve(&cli.model, std::path::Path::new("."), &cli.knobs)?;
    let k = w.resolve_knobs(&cli.knobs)?;
    let p = oomdoc::memory::prepare(&w, &k);
    let b = k.batch as f64;
    let mut alloc = Allocator::default();
    let mut ids: Vec<Option<usize>> = vec![None; p.profile.slots];
    let events = p.profile.sized_events(b, CALIBRATION_DEVICE);
    for step in 0..if cli.segments { 2 } else { 1 } {
        println!("step {step}");
        for e in &events {
            let (slot, bytes, param_grad) = match *e {
                SizedEv::Alloc {
                    slot,
                    bytes,
                    param_grad,
                } => (slot as usize, bytes, param_grad),
                SizedEv::Free { slot, bytes } => {
                    println!("F {bytes}");
                    if let Some(id) = ids[slot as usize].take() {
                        alloc.free(id);
                    }
                    continue;
                }
                SizedEv::EndForward => {
                    println!("E");
                    continue;
                }
            };
            if bytes == 0 {
                continue;
            }
            let kind = if param_grad { "G" } else { "A" };
            println!("{kind} {bytes} {}", label(p.trace, slot));
            if cli.segments {
                if let Some(id) = ids[slot].take() {
                    alloc.free(id);
                }
                let before = alloc.reserved;
                ids[slot] = Some(alloc.malloc(bytes));
                if alloc.reserved > before {
                    println!("S {}", alloc.reserved - before);
                }
            }
        }
        // zero_grad and whatever the walk left: freed between steps
        for id in ids.iter_mut() {
            if let Some(i) = id.take() {
                alloc.free(i);
            }
        }
    }
    Ok(())
}
