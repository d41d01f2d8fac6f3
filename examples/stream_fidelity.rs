//! How closely the analytic walk's allocation stream follows PyTorch's: for each H100 training
//! history in `tests/fixtures/trace/history/`, the requests of 1 MiB or more (the large pool,
//! which makes peak reserved memory) of the real steady step (from its second `forward` mark to
//! its second `optimizer` mark) and of one step of the walk for the same configuration, as
//! sequences of (alloc | free, size rounded to 512 B). Prints how many real events the longest
//! common subsequence of the two keeps (Myers diff).
//!
//! `cargo run --release --example stream_fidelity`
use std::path::Path;

use oomdoc::knobs::KnobArgs;
use oomdoc::memory::allocator::replay::{Action, Converted};
use oomdoc::memory::reduction::CALIBRATION_DEVICE;
use oomdoc::memory::sim::SizedEv;
use similar::{capture_diff_slices, Algorithm, DiffOp};

/// (history file, the estimate's arguments for its configuration)
const CASES: [(&str, &str); 6] = [
    ("resnet18_fp32_b64", "--model preset:resnet18 --batch 64 --precision fp32"),
    ("resnet18_fp32_b128", "--model preset:resnet18 --batch 128 --precision fp32"),
    (
        "navdp_fp32_ckptvit_b16",
        "--model preset:navdp --batch 16 --precision fp32 --checkpointing selective --checkpoint-modules rgb_model.blocks,depth_model.blocks",
    ),
    (
        "navdp_bf16_ckptvit_b16",
        "--model preset:navdp --batch 16 --precision bf16-mixed --checkpointing selective --checkpoint-modules rgb_model.blocks,depth_model.blocks",
    ),
    (
        "vit_b16_bf16_ckpt_b64",
        "--model preset:vit-b16 --batch 64 --precision bf16-mixed --checkpointing full",
    ),
    (
        "navdp_bf16_ckpt_b8",
        "--model preset:navdp --batch 8 --precision bf16-mixed --checkpointing full",
    ),
];

const LARGE: u64 = 1 << 20;

#[derive(clap::Parser)]
struct Args {
    #[arg(long)]
    model: String,
    #[command(flatten)]
    knobs: KnobArgs,
}

fn round(b: u64) -> u64 {
    b.div_ceil(512) * 512
}

/// The real steady step's large requests and frees.
fn real(h: &Converted) -> Vec<(bool, u64)> {
    let at = |what: &str| h.marks.iter().filter(|m| m.0 == what).nth(1).map(|m| m.1);
    let (Some(a), Some(b)) = (at("forward"), at("optimizer")) else {
        return Vec::new();
    };
    h.events[a..b]
        .iter()
        .filter(|e| e.size >= LARGE)
        .filter_map(|e| match e.action {
            Action::Alloc => Some((true, round(e.size))),
            Action::FreeCompleted => Some((false, round(e.size))),
            _ => None,
        })
        .collect()
}

/// One step of the walk, as the allocator replay sees it.
fn walk(args: &str) -> anyhow::Result<Vec<(bool, u64)>> {
    use clap::Parser;
    let cli = Args::try_parse_from(std::iter::once("walk").chain(args.split_whitespace()))?;
    let w = oomdoc::model::resolve(&cli.model, Path::new("."), &cli.knobs)?;
    let k = w.resolve_knobs(&cli.knobs)?;
    let p = oomdoc::memory::prepare(&w, &k);
    let out = p
        .profile
        .sized_events(k.batch as f64, CALIBRATION_DEVICE)
        .into_iter()
        .filter_map(|e| match e {
            SizedEv::Alloc { bytes, .. } if bytes >= LARGE => Some((true, round(bytes))),
            SizedEv::Free { bytes, .. } if bytes >= LARGE => Some((false, round(bytes))),
            _ => None,
        })
        .collect();
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let dir = Path::new("tests/fixtures/trace/history");
    let (mut kept, mut total) = (0usize, 0usize);
    println!("| history | real events >= 1 MiB | walk events | kept in order | share |");
    println!("|---|---|---|---|---|");
    for (name, args) in CASES {
        let path = dir.join(format!("{name}.json.gz"));
        let h = Converted::load(&path)
            .ok_or_else(|| anyhow::anyhow!("{}: not a converted history", path.display()))?;
        let r = real(&h);
        let w = walk(args)?;
        let same: usize = capture_diff_slices(Algorithm::Myers, &w, &r)
            .iter()
            .map(|op| match op {
                DiffOp::Equal { len, .. } => *len,
                _ => 0,
            })
            .sum();
        kept += same;
        total += r.len();
        println!(
            "| {name} | {} | {} | {same} | {:.1}% |",
            r.len(),
            w.len(),
            100.0 * same as f64 / r.len().max(1) as f64
        );
    }
    println!(
        "| all | {total} | | {kept} | {:.1}% |",
        100.0 * kept as f64 / total.max(1) as f64
    );
    Ok(())
}
