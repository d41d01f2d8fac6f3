//! One estimate (workload resolved once, as `plan` uses it) and `validate` of the calibration file.
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use oomdoc::knobs::{KnobArgs, Precision};

fn bench(c: &mut Criterion) {
    let args = KnobArgs::default();
    let w = oomdoc::model::resolve("preset:navdp", Path::new("."), &args).unwrap();
    let k = w.resolve_knobs(&args).unwrap();
    // first call walks the trace; later ones reuse the cached profile
    oomdoc::memory::estimate(&w, &k).unwrap();
    c.bench_function("estimate navdp (profile and replay cached)", |b| {
        b.iter(|| oomdoc::memory::estimate(&w, &k).unwrap())
    });
    c.bench_function(
        "estimate_fast navdp, new batch and precision each time",
        |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                let mut k = k.clone();
                k.batch = 1 + i % 64;
                k.precision = if i % 2 == 0 {
                    Precision::Fp32
                } else {
                    Precision::Bf16Mixed
                };
                oomdoc::memory::estimate_fast(&w, &k, None).unwrap()
            })
        },
    );
    // the parts of a cold estimate: tracing, then the step walk (profile), then the replay
    c.bench_function("resolve navdp (cold: trace)", |b| {
        b.iter(|| oomdoc::model::resolve("preset:navdp", Path::new("."), &args).unwrap())
    });
    c.bench_function("resolve + prepare navdp (cold: trace, walk)", |b| {
        b.iter(|| {
            let w = oomdoc::model::resolve("preset:navdp", Path::new("."), &args).unwrap();
            let k = w.resolve_knobs(&args).unwrap();
            oomdoc::memory::prepare(&w, &k).profile.points.len()
        })
    });
    cold(
        c,
        "resolve + estimate navdp (cold: trace, walk, replay)",
        "preset:navdp",
        &args,
    );
    // the example of `estimate`'s documentation: bf16-mixed with full checkpointing, where the
    // walk recomputes every checkpointed block and the replay sees the most events
    let ckpt_args = KnobArgs {
        batch: Some(16),
        precision: Some(Precision::Bf16Mixed),
        checkpointing: Some(oomdoc::knobs::Checkpointing::Full),
        ..KnobArgs::default()
    };
    cold(
        c,
        "resolve + estimate navdp bf16-mixed, full checkpointing (cold)",
        "preset:navdp",
        &ckpt_args,
    );
    cold(c, "resolve + estimate gpt2 (cold)", "preset:gpt2", &args);
    let file = Path::new("tests/fixtures/calibration/measurements-h100-torch2.11.jsonl");
    let mut g = c.benchmark_group("validate");
    g.sample_size(10);
    g.bench_function("validate calibration (46 rows)", |b| {
        b.iter(|| oomdoc::memory::validate::validate_file(file).unwrap())
    });
    g.finish();
}

/// A cold estimate: the workload resolved (traced), walked and replayed from nothing.
fn cold(c: &mut Criterion, name: &str, model: &str, args: &KnobArgs) {
    c.bench_function(name, |b| {
        b.iter(|| {
            let w = oomdoc::model::resolve(model, Path::new("."), args).unwrap();
            let k = w.resolve_knobs(args).unwrap();
            oomdoc::memory::estimate(&w, &k).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
