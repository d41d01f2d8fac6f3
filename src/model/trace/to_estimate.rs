//! `estimate --model trace:PATH`: the traced tier's result in the shape of `oomdoc estimate`
//! (the same JSON contract and report as the analytic tier).
use std::path::Path;

use super::Phase;
use super::{estimate_with, EstimateOptions, TraceEstimate, OUTSIDE_PYTORCH_BYTES};
use crate::error::{Error, Result};
use crate::gpu::TargetGpu;
use crate::knobs::{Attention, KnobArgs, KnobDefaults};
use crate::memory::{Components, Details, Estimate, GpuFit, WorkloadSummary};

/// Loads the trace, estimates at the knobs (batch default: the largest traced batch) and, with a
/// GPU, replays against its capacity so the allocator's own out-of-memory point is found.
pub fn estimate_file(
    path: &Path,
    knobs: &KnobArgs,
    gpu: Option<&TargetGpu>,
) -> Result<(Estimate, TraceEstimate)> {
    let trace = super::load(path)?;
    let largest = trace.steady_runs().last().map(|r| r.batch).unwrap_or(1);
    // The trace records the model as it ran: its attention is whatever its code did (not a knob).
    let k = knobs.resolve(&KnobDefaults {
        batch: largest,
        attention: Attention::Sdpa,
    })?;
    let mut opts = EstimateOptions::default();
    if let Some(g) = gpu {
        opts.allocator.capacity = Some(g.memory_bytes.saturating_sub(OUTSIDE_PYTORCH_BYTES));
        opts.device = g.reduction_device();
    }
    let t = estimate_with(&trace, &k, &opts)?;
    let get = |name: &str| {
        t.components
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.bytes)
            .sum::<u64>()
    };
    let components = Components {
        parameters: get("parameters"),
        gradients: get("gradients"),
        optimizer_state: get("optimizer_state"),
        activations: get("activations"),
        transient: get("temporaries"),
        workspace: get("workspaces"),
        batch: 0,
        outside_pytorch: t.outside_pytorch_bytes,
        allocator_overhead: t.peak_reserved_bytes.saturating_sub(t.peak_allocated_bytes),
    };
    let fits = gpu.map(|g| t.oom.is_none() && t.peak_device_bytes <= g.memory_bytes);
    let e = Estimate {
        peak_allocated_bytes: t.peak_allocated_bytes,
        peak_reserved_bytes: t.peak_reserved_bytes,
        device_total_bytes: t.peak_device_bytes,
        components,
        fits,
        gpu: gpu.map(|g| GpuFit {
            name: g.name.clone(),
            memory_bytes: g.memory_bytes,
            headroom_bytes: g.memory_bytes as i64 - t.peak_device_bytes as i64,
        }),
        workload: WorkloadSummary {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source: format!("trace:{}", path.display()),
            params: 0,
            trainable_params: 0,
            knobs: k,
            seq_len: None,
            image_size: None,
        },
        peak_phase: match t.peak_phase {
            Phase::Backward => crate::memory::Phase::Backward,
            Phase::Optimizer => crate::memory::Phase::OptimizerStep,
            _ => crate::memory::Phase::Forward,
        },
        details: Details::default(),
    };
    if t.peak_allocated_bytes == 0 {
        return Err(Error::input(format!(
            "{}: the trace has no allocations to replay",
            path.display()
        )));
    }
    Ok((e, t))
}
