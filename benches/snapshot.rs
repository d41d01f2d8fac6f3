//! `oomdoc snapshot` parse + analyse speed.
//!
//! `cargo bench --bench snapshot` measures the real fixtures with criterion. For the 1 GiB benchmark
//! (docs/performance.md), make the synthetic file with `python3 benches/make_snapshot.py FILE` and
//! run `OOMDOC_BENCH_FILE=FILE cargo bench --bench snapshot`: it is parsed and analysed once and timed.
use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/snapshots")
        .join(name)
}

fn bench(c: &mut Criterion) {
    if let Ok(file) = std::env::var("OOMDOC_BENCH_FILE") {
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        let snap = oomdoc::snapshot::load(Path::new(&file)).expect("load");
        let parsed = t.elapsed();
        let a = oomdoc::snapshot::analyse(&snap);
        let total = t.elapsed();
        println!(
            "{file}: {size} bytes, {} trace entries: parse {:.2} s, parse+analyse {:.2} s ({} sites)",
            snap.trace_len(),
            parsed.as_secs_f64(),
            total.as_secs_f64(),
            a.top_sites.len()
        );
        return;
    }
    for name in [
        "navdp_like_fp32_b16_oom_at_23.55GiB.pickle.gz",
        "gpt2_bf16_b4_two_steps_history.pickle.gz",
    ] {
        let path = fixture(name);
        c.bench_function(&format!("load+analyse {name}"), |b| {
            b.iter(|| {
                let snap = oomdoc::snapshot::load(&path).expect("load");
                oomdoc::snapshot::analyse(&snap)
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
