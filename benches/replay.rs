//! Replay speed of the traced tier: a synthetic trace of one million events (a deep network's
//! forward/backward pattern: activations kept until backward, temporaries freed at once,
//! sizes from 512 B to 64 MiB) estimated end to end, and the raw allocator simulation.
//!
//! `cargo bench --bench replay`
use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, Criterion};
use oomdoc::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};
use oomdoc::memory::allocator::{Allocator, AllocatorConfig};
use oomdoc::model::trace::{self, Event, Phase, Run, Trace};

/// A run of about `n` events at `batch`.
/// With `differ`, each layer's ops differ between batch sizes: one op of its own per
/// batch size, and at the larger one a copy the smaller one does not make (a view that is
/// contiguous at batch 1 only), as in every decoder layer of NavDP-like.
fn run(name: &str, batch: u64, n: usize, differ: bool) -> Run {
    let mut events = Vec::with_capacity(n);
    let mut id = 0u64;
    let mut saved = Vec::new();
    let mut kept = Vec::new();
    let mut x = 12345u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let layers = n / 8;
    for _ in 0..layers {
        // per layer: two kept activations, one temporary
        if differ {
            for op in [2 + batch.min(2) as u32, 4]
                .into_iter()
                .take(batch as usize)
            {
                events.push(Event::Alloc {
                    id,
                    bytes: 4096 * batch,
                    dtype: 0,
                    shape: vec![batch],
                    op,
                    module: 0,
                    phase: Phase::Forward,
                    region: None,
                });
                events.push(Event::Free {
                    id,
                    phase: Phase::Forward,
                    region: None,
                });
                id += 1;
            }
        }
        for k in 0..3 {
            let bytes = (512 + rnd() % (64 << 20)) / 4 * batch;
            events.push(Event::Alloc {
                id,
                bytes,
                dtype: 0,
                shape: vec![batch],
                op: if differ { 1 + (k == 1) as u32 * 4 } else { 1 },
                module: 0,
                phase: Phase::Forward,
                region: None,
            });
            if k == 2 {
                events.push(Event::Free {
                    id,
                    phase: Phase::Forward,
                    region: None,
                });
            } else {
                kept.push(id);
                saved.push(id);
            }
            id += 1;
        }
        // keep the live set bounded: free the oldest activations as a backward pass would
        while kept.len() > 64 {
            let old = kept.remove(0);
            events.push(Event::Free {
                id: old,
                phase: Phase::Backward,
                region: None,
            });
        }
        let g = id;
        id += 1;
        events.push(Event::Alloc {
            id: g,
            bytes: (512 + rnd() % (8 << 20)) * batch,
            dtype: 0,
            shape: vec![batch],
            op: 1,
            module: 0,
            phase: Phase::Backward,
            region: None,
        });
        events.push(Event::Free {
            id: g,
            phase: Phase::Backward,
            region: None,
        });
    }
    for old in kept {
        events.push(Event::Free {
            id: old,
            phase: Phase::Backward,
            region: None,
        });
    }
    Run {
        name: name.into(),
        batch,
        persistent: vec![],
        events,
        saved,
        categories: HashMap::new(),
        alive_after: vec![],
        regions: vec![],
        untraced: vec![],
    }
}

fn synthetic(differ: bool) -> Trace {
    let per_run = 1_000_000 / 3;
    Trace {
        version: 1,
        producer: "bench".into(),
        torch: String::new(),
        autocast: vec![],
        optimizers: vec![],
        strings: [
            "float32",
            "aten.mm.default",
            "aten.add.Tensor",
            "aten.mul.Tensor",
        ]
        .into_iter()
        .chain(["aten.clone.default", "aten.gelu.default"])
        .map(String::from)
        .collect(),
        runs: vec![
            run("first", 1, per_run, differ),
            run("steady", 1, per_run, differ),
            run("steady", 2, per_run, differ),
        ],
    }
}

fn knobs() -> Knobs {
    Knobs {
        batch: 4,
        grad_accum: 1,
        precision: Precision::Fp32,
        checkpointing: Checkpointing::None,
        checkpoint_modules: vec![],
        attention: Attention::Sdpa,
        optimizer: Optimizer::Adamw,
        gpus: 1,
        sharding: Sharding::None,
        lora_rank: None,
        lora_targets: vec![],
    }
}

/// CPU time of this thread (the machine may be shared: wall time then says little).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One estimate of `t`, timed in CPU seconds and reported.
fn one_estimate(what: &str, t: &Trace, k: &Knobs) {
    let t0 = cpu_seconds();
    let e = trace::estimate(t, k).unwrap();
    eprintln!(
        "{what}: {} events ({} replayed with the steady steps); one estimate: {:.3} s CPU",
        t.event_count(),
        e.events_replayed,
        cpu_seconds() - t0
    );
}

fn bench(c: &mut Criterion) {
    let t = synthetic(false);
    let k = knobs();
    one_estimate("synthetic trace", &t, &k);
    // the op alignment between the traced batch sizes is a diff: its cost grows with the
    // number of places where they differ
    one_estimate(
        "synthetic trace whose batch sizes differ in every layer",
        &synthetic(true),
        &k,
    );
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.bench_function("estimate_1m_event_trace", |b| {
        b.iter(|| trace::estimate(&t, &k).unwrap().peak_reserved_bytes)
    });
    // the allocator alone: one million malloc/free calls
    g.bench_function("allocator_1m_calls", |b| {
        b.iter(|| {
            let mut a = Allocator::new(AllocatorConfig::default());
            let mut live = Vec::with_capacity(256);
            let mut x = 99u64;
            for i in 0..500_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let addr = a.malloc(512 + x % (32 << 20), 0).unwrap();
                live.push(addr);
                if live.len() > 200 || i % 3 == 0 {
                    let v = live.swap_remove((x % live.len() as u64) as usize);
                    a.free(v);
                }
            }
            a.stats().peak_reserved
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
