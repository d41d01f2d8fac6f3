//! Replays real allocator histories (snapshots converted by tests/fixtures/trace/convert_snapshots.py,
//! e.g. from `scripts/gpu-measure.py --parts history`) through the allocator simulator and prints,
//! at each step mark, the real and the simulated peak reserved bytes since the stream began.
//!
//! Usage: cargo run --release --example replay_history -- HISTORY.json.gz...
use std::collections::HashSet;

use oomdoc::memory::allocator::replay::{replay, Action, Converted};
use oomdoc::memory::allocator::AllocatorConfig;

const GIB: f64 = (1u64 << 30) as f64;

fn main() {
    for path in std::env::args().skip(1) {
        let Some(h) = Converted::load(std::path::Path::new(&path)) else {
            eprintln!("{path}: not a converted snapshot");
            std::process::exit(2);
        };
        // blocks alive before the stream: never allocated in the whole stream (prefixes must not
        // seed blocks that the rest of the stream allocates)
        let allocated: HashSet<u64> = h
            .events
            .iter()
            .filter(|e| e.action == Action::Alloc)
            .map(|e| e.addr)
            .collect();
        let older: Vec<(u64, u64)> = h
            .live
            .iter()
            .copied()
            .filter(|(a, _)| !allocated.contains(a))
            .collect();
        println!("{path}: {} events", h.events.len());
        let mut cuts: Vec<(String, usize)> = h.marks.clone();
        cuts.push(("end".into(), h.events.len()));
        let mut step = 0;
        for (what, at) in cuts.iter().skip(1) {
            if what == "optimizer" {
                continue;
            }
            let pre = &h.events[..*at];
            let r = replay(pre, &older, AllocatorConfig::default());
            let real = &r.real;
            println!(
                "  up to step {step} ({what} at event {at}): real peak reserved {:.3} GiB, simulated {:.3} GiB ({:+.1}%); real peak segments {}",
                real.peak_reserved as f64 / GIB,
                r.sim.peak_reserved as f64 / GIB,
                (r.sim.peak_reserved as f64 / real.peak_reserved.max(1) as f64 - 1.0) * 100.0,
                real.peak_segments,
            );
            step += 1;
        }
    }
}
