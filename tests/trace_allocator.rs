//! The allocator simulator against the real CUDA caching allocator: replays the alloc/free streams
//! of three real snapshots (H100, torch 2.11; converted by tests/fixtures/trace/convert_snapshots.py)
//! and compares segments and reserved bytes. The figures are written to docs/accuracy.md.
use oomdoc::memory::allocator::replay::{replay, Converted, ReplayResult};
use oomdoc::memory::allocator::AllocatorConfig;

fn load(name: &str) -> Converted {
    let path = format!("{}/tests/fixtures/trace/{name}", env!("CARGO_MANIFEST_DIR"));
    Converted::load(std::path::Path::new(&path)).unwrap()
}

/// `set_per_process_memory_fraction(gib * GiB / total)` as the allocator applies it:
/// `allowed_memory_maximum = size_t(fraction * total)` (CUDACachingAllocator.cpp), with the H100's
/// total from calibration/meta.json.
fn fraction_cap(gib: f64) -> u64 {
    let total = 85_017_493_504f64;
    let fraction = gib * (1u64 << 30) as f64 / total;
    (fraction * total) as u64
}

fn run(name: &str, capacity: Option<u64>) -> (Converted, ReplayResult) {
    let f = load(name);
    let cfg = AllocatorConfig {
        capacity,
        ..AllocatorConfig::default()
    };
    let r = replay(&f.events, &f.live, cfg);
    eprintln!(
        "{name}: real segments {} reserved {} peak {} | sim segments {} reserved {} peak {} retries {} oom_at {:?} (real {:?}) | stats peak {} retries {}",
        f.segments,
        f.reserved,
        r.real.peak_reserved,
        r.sim_final_segments,
        r.sim.reserved,
        r.sim.peak_reserved,
        r.sim.num_alloc_retries,
        r.sim_oom_at,
        r.real.oom_at,
        f.stats["reserved_peak"],
        f.stats["num_alloc_retries"],
    );
    (f, r)
}

#[test]
fn gpt2_training_history_replays_exactly() {
    let (f, r) = run("snap_gpt2_bf16_b4_two_steps.json.gz", None);
    assert_eq!(r.seeded_blocks, 0, "the stream is complete");
    assert_eq!(r.real.final_reserved, f.reserved);
    assert_eq!(r.sim.reserved, f.reserved);
    assert_eq!(r.sim_final_segments, f.segments);
    assert_eq!(r.sim.peak_reserved, r.real.peak_reserved);
}

#[test]
fn gpt2_capped_8gib_ooms_at_the_same_request() {
    let (f, r) = run(
        "snap_gpt2_fp32_b8_oom_8GiB.json.gz",
        Some(fraction_cap(8.0)),
    );
    assert_eq!(r.sim_final_segments, f.segments);
    assert_eq!(r.sim.reserved, f.reserved);
    // the oom entry directly follows the last alloc the real allocator could serve
    assert_eq!(r.sim_oom_at, r.real.oom_at);
    assert_eq!(
        r.sim.num_alloc_retries,
        f.stats["num_alloc_retries"].as_u64().unwrap()
    );
}

#[test]
fn navdp_capped_23_55gib_ooms_at_the_same_request() {
    let (f, r) = run(
        "snap_navdp_fp32_b16_oom_23.55GiB.json.gz",
        Some(fraction_cap(23.55)),
    );
    assert_eq!(r.sim_final_segments, f.segments);
    assert_eq!(r.sim.reserved, f.reserved);
    assert_eq!(r.sim_oom_at, r.real.oom_at);
    assert_eq!(
        r.sim.num_alloc_retries,
        f.stats["num_alloc_retries"].as_u64().unwrap()
    );
}

#[test]
fn seeding_covers_a_history_that_starts_mid_run() {
    // drop the first half of the stream: frees of older blocks must not break the replay
    let f = load("snap_gpt2_bf16_b4_two_steps.json.gz");
    let half = &f.events[f.events.len() / 2..];
    let r = replay(half, &f.live, AllocatorConfig::default());
    assert!(r.seeded_blocks > 0);
    assert!(r.sim_oom_at.is_none());
}

/// Six training histories recorded on an H100 (`scripts/gpu-measure.py --parts history`:
/// warm-up and three steps of calibration rows, run one after another in one process). Except
/// for the first they start with the blocks the previous configuration left (cuBLAS workspaces),
/// which the replay seeds. The real allocator packs by address among free blocks of equal size,
/// and the addresses are the CUDA driver's: the simulator gives new segments descending
/// addresses, as the driver mostly did here. Figures in docs/accuracy.md.
#[test]
fn h100_training_histories_replay_within_4_percent() {
    let mut worst: f64 = 0.0;
    for (name, exact) in [
        ("history/resnet18_fp32_b64.json.gz", false),
        ("history/navdp_fp32_ckptvit_b16.json.gz", true),
        ("history/navdp_bf16_ckptvit_b16.json.gz", false),
        ("history/resnet18_fp32_b128.json.gz", true),
        ("history/vit_b16_bf16_ckpt_b64.json.gz", true),
        ("history/navdp_bf16_ckpt_b8.json.gz", false),
    ] {
        let (_, r) = run(name, None);
        assert!(r.sim_oom_at.is_none());
        let err = r.sim.peak_reserved as f64 / r.real.peak_reserved as f64 - 1.0;
        eprintln!("{name}: peak reserved error {:+.2}%", err * 100.0);
        assert!(err.abs() <= 0.04, "{name}: {err:+.4}");
        if exact {
            // same segments, same packing: within one 2 MiB page
            assert!(
                r.sim.peak_reserved.abs_diff(r.real.peak_reserved) <= 2 << 20,
                "{name}: {} vs {}",
                r.sim.peak_reserved,
                r.real.peak_reserved
            );
        }
        worst = worst.max(err.abs());
    }
    eprintln!("worst {:.2}%", worst * 100.0);
}
