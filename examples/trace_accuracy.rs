//! Peak reserved memory from the calibration traces against the H100 measurements.
//!
//! `cargo run --release --example trace_accuracy -- MEASUREMENTS.jsonl TRACE_DIR [--transform | --transform-all] [--segment-seed N]`
//! (`--transform`: rows without a trace of their own use the trace without checkpointing (in
//! their precision if traced, else fp32), transformed by the estimate's precision and
//! checkpointing rules, reported separately; `--transform-all`: every row that needs a
//! transformation goes through the rules, even where it has a trace of its own; `--segment-seed N`:
//! the allocator simulation places new segments in a pseudo-random address order from seed N
//! instead of descending, to see how much each row's peak reserved depends on that order)
//! (traces made by scripts/trace-calibration.py; named <workload>_<prec>_<ckpt|nockpt>_<opt>[_variant].trace.json.gz)
use std::path::Path;

use oomdoc::memory::allocator::SegmentOrder;
use oomdoc::model::trace::{self, accuracy};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let source = if args.iter().any(|a| a == "--transform-all") {
        accuracy::Source::Transformed
    } else if args.iter().any(|a| a == "--transform") {
        accuracy::Source::OwnElseTransformed
    } else {
        accuracy::Source::Own
    };
    let transform = source != accuracy::Source::Own;
    let (rows, dir) = match (args.get(1), args.get(2)) {
        (Some(r), Some(d)) => (r.clone(), d.clone()),
        _ => anyhow::bail!("usage: trace_accuracy MEASUREMENTS.jsonl TRACE_DIR"),
    };
    let mut opts = trace::EstimateOptions::default();
    if let Some(i) = args.iter().position(|a| a == "--segment-seed") {
        let seed = args.get(i + 1).and_then(|s| s.parse().ok());
        let Some(seed) = seed else {
            anyhow::bail!("--segment-seed takes a number");
        };
        opts.allocator.segment_order = SegmentOrder::Shuffled(seed);
    }
    let text = std::fs::read_to_string(&rows)?;
    let mut errs: Vec<f64> = Vec::new();
    let mut terrs: Vec<f64> = Vec::new();
    println!("| configuration | batch | accum | measured peak reserved (GiB) | traced estimate (GiB) | error | peak allocated: measured / estimate (GiB) |");
    println!("|---|---|---|---|---|---|---|");
    let gib = |x: u64| x as f64 / (1u64 << 30) as f64;
    for r in accuracy::evaluate_with(&text, Path::new(&dir), source, &opts)? {
        let (Some((alloc, reserved)), Some(err)) = (r.estimate, r.reserved_error()) else {
            println!("| {} | – | – | – | no trace | – | – |", r.name);
            continue;
        };
        if r.transformed {
            terrs.push(err);
        } else {
            errs.push(err);
        }
        println!(
            "| {}{} | {} | {} | {:.2} | {:.2} | {:+.1}% | {:.2} / {:.2} |",
            r.name,
            if r.transformed { " (transformed)" } else { "" },
            r.batch,
            r.accum,
            gib(r.measured_reserved),
            gib(reserved),
            err * 100.0,
            gib(r.measured_alloc),
            gib(alloc),
        );
    }
    summary("traced in the measured precision and checkpointing", &errs);
    if transform {
        summary(
            "transformed (from the trace without checkpointing, in the row's precision if traced, else fp32)",
            &terrs,
        );
    }
    Ok(())
}

fn summary(what: &str, errs: &[f64]) {
    let mut abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
    abs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if abs.is_empty() {
        return;
    }
    let median = if abs.len() % 2 == 1 {
        abs[abs.len() / 2]
    } else {
        (abs[abs.len() / 2 - 1] + abs[abs.len() / 2]) / 2.0
    };
    let under = errs.iter().filter(|e| **e < -0.03).count();
    println!();
    println!(
        "{what}: rows {}; |error| median {:.1}%, max {:.1}%; under-estimates beyond 3%: {}",
        abs.len(),
        median * 100.0,
        abs[abs.len() - 1] * 100.0,
        under
    );
}
