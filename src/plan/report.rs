//! Renders a `Plan` as the seed's analysis, in its order, with computed numbers.
use super::analysis::{Component, Plan};
use super::search::{Candidate, Change, Safety};
use super::steps;
use super::words::W;
use crate::knobs::{Checkpointing, Knobs, Optimizer, Precision};
use crate::report::units::{bytes, gib};
use crate::report::{fill, Document, Lang};

fn safety_word(s: Safety, l: Lang) -> &'static str {
    match s {
        Safety::Safe => W::Safe.text(l),
        Safety::Tight => W::Tight.text(l),
        Safety::NoFit => W::NoFit.text(l),
    }
}

/// "Memory after" and "Fits" lines of a solution or combination.
fn memory_rows(c: &Candidate, l: Lang) -> Vec<(String, String)> {
    vec![
        (
            W::HMemoryAfter.text(l).into(),
            gib(c.eval.device_total_bytes),
        ),
        (W::HFits.text(l).into(), safety_word(c.safety, l).into()),
    ]
}

fn component_word(name: &str, l: Lang) -> String {
    match name {
        "parameters" => W::CParameters.text(l),
        "gradients" => W::CGradients.text(l),
        "optimizer_state" => W::COptimizer.text(l),
        "activations" => W::CActivations.text(l),
        "transient" => W::CTransient.text(l),
        "workspace" => W::CWorkspace.text(l),
        "batch" => W::CBatch.text(l),
        "outside_pytorch" => W::COutside.text(l),
        "allocator_overhead" => W::CAllocator.text(l),
        other => return other.to_string(),
    }
    .to_string()
}

/// The name of one change, in the user's language.
pub fn change_title(c: &Change, l: Lang) -> String {
    match c {
        Change::Precision { to, .. } => fill(W::SolPrecision.text(l), &[&to.name()]),
        Change::Attention { .. } => W::SolAttention.text(l).to_string(),
        Change::Checkpointing {
            to: Checkpointing::Selective,
            modules,
            ..
        } => fill(W::SolCkptSel.text(l), &[&modules.join(", ")]),
        Change::Checkpointing {
            to: Checkpointing::Full,
            ..
        } => W::SolCkptFull.text(l).to_string(),
        Change::Checkpointing { .. } => c.describe(),
        Change::MicroBatch { to, grad_accum, .. } => {
            fill(W::SolMicroBatch.text(l), &[to, grad_accum])
        }
        Change::EffectiveBatch { to, .. } => fill(W::SolBatch.text(l), &[to]),
        Change::Optimizer { to, .. } => fill(W::SolOptimizer.text(l), &[&to.name()]),
        Change::Sharding { to, .. } => format!("{to:?}").to_lowercase(),
    }
}

fn candidate_title(c: &Candidate, l: Lang) -> String {
    if c.change_list.is_empty() {
        return W::Unchanged.text(l).to_string();
    }
    c.change_list
        .iter()
        .map(|ch| change_title(ch, l))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn speed(c: &Candidate, l: Lang) -> String {
    fill(
        W::SpeedVsBase.text(l),
        &[
            &format!("{:.1}", c.samples_per_s),
            &format!("{:.2}", c.speedup),
        ],
    )
}

fn knob_lines(k: &Knobs) -> String {
    let mut s = format!(
        "precision = {}\nattention = {}\ncheckpointing = {}",
        k.precision.name(),
        format!("{:?}", k.attention).to_lowercase(),
        format!("{:?}", k.checkpointing).to_lowercase()
    );
    if !k.checkpoint_modules.is_empty() {
        s.push_str(&format!(
            "\ncheckpoint_modules = {}",
            k.checkpoint_modules.join(",")
        ));
    }
    s.push_str(&format!(
        "\nbatch_size = {}\ngradient_accumulation_steps = {}\noptimizer = {}",
        k.batch,
        k.grad_accum,
        k.optimizer.name()
    ));
    if k.gpus > 1 {
        s.push_str(&format!(
            "\ngpus = {}\nsharding = {}",
            k.gpus,
            format!("{:?}", k.sharding).to_lowercase()
        ));
    }
    s
}

pub fn document(p: &Plan, l: Lang) -> Document {
    let mut d = Document::new();
    d.heading(1, W::Title.text(l));
    let base = &p.baseline;
    let cap = p.gpu.memory_bytes;

    // Problem analysis: the verdict and what dominates, then the current state and the memory
    // analysis as its subsections (the seed's order).
    d.heading(2, W::ProblemAnalysis.text(l));
    let need = base.eval.device_total_bytes;
    let sentence = match base.safety {
        Safety::NoFit => fill(
            W::DoesNotFit.text(l),
            &[&gib(need), &gib(cap), &gib(need - cap)],
        ),
        Safety::Tight => fill(
            W::FitsTight.text(l),
            &[&gib(need), &gib(cap), &gib(cap - need)],
        ),
        Safety::Safe => fill(
            W::FitsSafe.text(l),
            &[&gib(need), &gib(cap), &gib(cap - need)],
        ),
    };
    d.para(sentence);
    if let Some(s) = dominant_sentence(&p.baseline_components, l) {
        d.para(s);
    }
    d.heading(3, W::CurrentState.text(l));
    if let Some(s) = &p.log {
        let mut kv = Vec::new();
        let mut add = |k: W, v: Option<u64>| {
            if let Some(v) = v {
                kv.push((k.text(l).to_string(), bytes(v)));
            }
        };
        add(W::GpuCapacity, s.total_capacity_bytes);
        add(W::Allowed, s.allowed_bytes);
        add(W::InUse, s.process_in_use_bytes);
        add(W::PytorchAllocated, s.allocated_bytes);
        add(W::ReservedUnallocated, s.reserved_unallocated_bytes);
        add(W::Free, s.free_bytes);
        if let Some(r) = s.requested_bytes {
            kv.push((
                W::FailedAlloc.text(l).into(),
                fill(W::FailedAllocValue.text(l), &[&bytes(r)]),
            ));
        }
        d.kv(kv);
        d.para(fill(W::LogLine.text(l), &[&s.line, &s.kind]));
    } else {
        if p.log_without_event {
            d.para(W::NoLogEvent.text(l));
        }
        d.para(W::Predicted.text(l));
        d.kv(vec![
            (
                W::Gpu.text(l).into(),
                format!("{} ({})", p.gpu.name, gib(cap)),
            ),
            (
                W::PeakAllocated.text(l).into(),
                gib(base.eval.peak_allocated_bytes),
            ),
            (
                W::PeakReserved.text(l).into(),
                gib(base.eval.peak_reserved_bytes),
            ),
            (
                W::DeviceTotal.text(l).into(),
                gib(base.eval.device_total_bytes),
            ),
        ]);
    }

    d.heading(3, W::MemoryAnalysis.text(l));
    let k = &base.knobs;
    d.kv(vec![
        (W::Model.text(l).into(), p.model.name.clone()),
        (
            W::Params.text(l).into(),
            format!(
                "{} ({} {})",
                group_digits(p.model.params),
                group_digits(p.model.trainable_params),
                W::Trainable.text(l)
            ),
        ),
        (W::BatchSize.text(l).into(), k.batch.to_string()),
        (
            W::EffectiveBatch.text(l).into(),
            (k.batch * k.grad_accum * k.gpus).to_string(),
        ),
        (W::Precision.text(l).into(), k.precision.name().into()),
        (
            W::Attention.text(l).into(),
            format!("{:?}", k.attention).to_lowercase(),
        ),
        (
            W::Checkpointing.text(l).into(),
            format!("{:?}", k.checkpointing).to_lowercase(),
        ),
        (W::Optimizer.text(l).into(), k.optimizer.name().into()),
    ]);
    components_section(&mut d, &p.baseline_components, l);

    // Solutions.
    d.heading(2, W::Solutions.text(l));
    if !p.solutions.iter().any(|s| s.fits) {
        d.para(W::NoSolutionFits.text(l));
    }
    for (i, s) in p.solutions.iter().enumerate() {
        let title = candidate_title(s, l);
        d.heading(
            3,
            format!(
                "{} {}: {}",
                if l == Lang::Zh { "方案" } else { "Option" },
                i + 1,
                title
            ),
        );
        let (pros, cons) = pros_cons(&s.change_list[0], l);
        let mut kv = memory_rows(s, l);
        kv.extend([
            (W::HSpeed.text(l).into(), speed(s, l)),
            (W::Pros.text(l).into(), pros),
            (W::Cons.text(l).into(), cons),
        ]);
        d.kv(kv);
    }

    // Combinations.
    d.heading(2, W::Combinations.text(l));
    let combos = [
        (W::ComboMax, &p.combinations.max_saving),
        (W::ComboBalanced, &p.combinations.balanced),
        (W::ComboConservative, &p.combinations.conservative),
    ];
    for (w, c) in combos {
        d.heading(3, w.text(l));
        match c {
            Some(c) => {
                d.code("python", knob_lines(&c.knobs));
                let mut kv = memory_rows(c, l);
                kv.extend([
                    (W::HSpeed.text(l).into(), speed(c, l)),
                    (W::HChanges.text(l).into(), candidate_title(c, l)),
                ]);
                d.kv(kv);
            }
            None => {
                d.para(W::ComboNone.text(l));
            }
        }
    }

    // Implementation steps for the recommended combination.
    if let Some(rec) = &p.combinations.balanced {
        d.heading(2, W::Steps.text(l));
        d.para(W::StepsIntro.text(l));
        for sn in steps::snippets(&base.knobs, &rec.knobs) {
            d.heading(3, sn.framework.title());
            d.code(sn.lang, sn.code);
        }
    }

    // bf16 check.
    d.heading(2, W::Bf16Check.text(l));
    match (p.gpu.bf16, p.gpu.compute_capability) {
        (Some(true), Some((ma, mi))) => d.para(fill(W::Bf16Yes.text(l), &[&p.gpu.name, &ma, &mi])),
        (Some(false), Some((ma, mi))) => d.para(fill(W::Bf16No.text(l), &[&p.gpu.name, &ma, &mi])),
        _ => d.para(W::Bf16Unknown.text(l)),
    };
    d.para(W::Bf16Command.text(l));
    d.code(
        "bash",
        "python -c \"import torch; print(torch.cuda.is_bf16_supported())\"",
    );

    // Expected effects.
    d.heading(2, W::ExpectedEffects.text(l));
    d.para(fill(W::EffectsIntro.text(l), &[&p.gpu.name]));
    let mut rows = Vec::new();
    let mut row = |name: String, c: &Candidate| {
        let saved =
            1.0 - c.eval.device_total_bytes as f64 / base.eval.device_total_bytes.max(1) as f64;
        rows.push(vec![
            name,
            gib(c.eval.device_total_bytes),
            format!("{:.0}%", saved * 100.0),
            format!("{} x {}", c.knobs.batch, c.knobs.grad_accum),
            format!("{:.2}x", c.speedup),
            safety_word(c.safety, l).to_string(),
        ]);
    };
    row(W::Unchanged.text(l).to_string(), base);
    for s in &p.solutions {
        row(candidate_title(s, l), s);
    }
    for (w, c) in combos {
        if let Some(c) = c {
            row(w.text(l).to_string(), c);
        }
    }
    d.table(
        vec![
            W::HOption.text(l).into(),
            W::HMemoryAfter.text(l).into(),
            W::HSaving.text(l).into(),
            W::HBatch.text(l).into(),
            W::HSpeedEffect.text(l).into(),
            W::HFits.text(l).into(),
        ],
        rows,
    );

    // Host memory.
    if let Some(h) = &p.host {
        d.heading(2, W::HostMemory.text(l));
        let mut lines = vec![fill(
            W::HostLine.text(l),
            &[
                &h.num_workers,
                &h.prefetch_factor,
                &base.knobs.batch,
                &gib(h.in_flight_bytes),
            ],
        )];
        if h.pin_memory {
            lines.push(fill(W::PinnedLine.text(l), &[&bytes(h.pinned_bytes)]));
        }
        d.bullets(lines);
    }

    // Caveats.
    d.heading(2, W::Caveats.text(l));
    let all: Vec<&Candidate> = p.plans.iter().chain(p.solutions.iter()).collect();
    let mut cav = Vec::new();
    if all
        .iter()
        .any(|c| c.knobs.precision.name().starts_with("fp16"))
    {
        cav.push(W::CavFp16.text(l).to_string());
    }
    cav.push(W::CavLr.text(l).to_string());
    cav.push(W::CavFrag.text(l).to_string());
    if all
        .iter()
        .any(|c| c.knobs.checkpointing != Checkpointing::None)
    {
        cav.push(W::CavCkpt.text(l).to_string());
    }
    cav.push(W::CavPinned.text(l).to_string());
    cav.push(fill(
        W::CavMargin.text(l),
        &[&format!("{:.0}%", p.margin_share * 100.0)],
    ));
    d.bullets(cav);
    d.para(fill(W::Searched.text(l), &[&p.searched]));
    d
}

fn pros_cons(c: &Change, l: Lang) -> (String, String) {
    let (p, c) = match c {
        Change::Precision { to, .. } => match to {
            Precision::Bf16True | Precision::Fp16True => {
                (W::ProsPrecision.text(l), W::ConsPureHalf.text(l))
            }
            Precision::Fp16Mixed => (W::ProsPrecision.text(l), W::ConsFp16.text(l)),
            Precision::Bf16Mixed => (W::ProsPrecision.text(l), W::ConsBf16Mixed.text(l)),
            Precision::Tf32 => (W::ProsTf32.text(l), W::ConsTf32.text(l)),
            Precision::Fp32 => ("-", "-"),
        },
        Change::Attention { .. } => (W::ProsAttention.text(l), W::ConsAttention.text(l)),
        Change::Checkpointing { .. } => (W::ProsCkpt.text(l), W::ConsCkpt.text(l)),
        Change::MicroBatch { .. } => (W::ProsMicro.text(l), W::ConsMicro.text(l)),
        Change::Optimizer {
            to: Optimizer::AdamwFused,
            from: Optimizer::Adamw,
        } => (W::ProsFusedOptimizer.text(l), W::ConsFusedOptimizer.text(l)),
        Change::Optimizer { .. } => (W::ProsOptimizer.text(l), W::ConsOptimizer.text(l)),
        Change::EffectiveBatch { .. } => ("-", W::CavLr.text(l)),
        Change::Sharding { .. } => (W::ProsSharding.text(l), W::ConsSharding.text(l)),
    };
    (p.to_string(), c.to_string())
}

fn components_section(d: &mut Document, comps: &[Component], l: Lang) {
    if comps.is_empty() {
        return;
    }
    let total: u64 = comps.iter().map(|c| c.bytes).sum();
    let mut rows = Vec::new();
    let mut bars = Vec::new();
    for c in comps {
        let share = c.bytes as f64 / total.max(1) as f64;
        rows.push(vec![
            component_word(&c.name, l),
            gib(c.bytes),
            format!("{:.1}%", share * 100.0),
        ]);
        bars.push((component_word(&c.name, l), c.bytes as f64, gib(c.bytes)));
    }
    d.table(
        vec![
            W::HComponent.text(l).into(),
            W::HMemory.text(l).into(),
            W::HShare.text(l).into(),
        ],
        rows,
    );
    d.bars(bars);
}

/// "Activations dominate: 93% of the peak." for the largest component.
fn dominant_sentence(comps: &[Component], l: Lang) -> Option<String> {
    let total: u64 = comps.iter().map(|c| c.bytes).sum();
    let top = comps.iter().max_by_key(|c| c.bytes)?;
    let share = top.bytes as f64 / total.max(1) as f64;
    Some(fill(
        W::Dominant.text(l),
        &[
            &component_word(&top.name, l),
            &format!("{:.0}%", share * 100.0),
        ],
    ))
}

/// 82190596 -> "82,190,596".
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::Sharding;

    /// Every change a plan can list says what it costs, in both languages; only dropping to
    /// fp32 and changing the effective batch have no "pro" to name.
    #[test]
    fn every_change_names_its_cost() {
        use Precision::*;
        let mut changes: Vec<Change> = [Fp16Mixed, Bf16Mixed, Bf16True, Fp16True, Tf32]
            .into_iter()
            .map(|to| Change::Precision { from: Fp32, to })
            .collect();
        changes.extend([
            Change::Optimizer {
                from: Optimizer::Adamw,
                to: Optimizer::AdamwFused,
            },
            Change::Optimizer {
                from: Optimizer::Adamw,
                to: Optimizer::Adamw8bit,
            },
            Change::Sharding {
                from: Sharding::None,
                to: Sharding::Zero2,
            },
        ]);
        for c in &changes {
            for l in [Lang::En, Lang::Zh] {
                let (pros, cons) = pros_cons(c, l);
                assert!(pros != "-" && cons != "-", "{c:?} {l:?}: {pros} / {cons}");
            }
        }
        // The fused optimizer changes no numerics: not the generic "check convergence".
        let fused = pros_cons(&changes[5], Lang::En);
        assert!(fused.1.contains("saves no memory"), "{fused:?}");
        assert!(pros_cons(&changes[1], Lang::En)
            .1
            .contains("activation memory only"));
    }

    #[test]
    fn groups_digits() {
        assert_eq!(super::group_digits(82190596), "82,190,596");
        assert_eq!(super::group_digits(12), "12");
    }
}
