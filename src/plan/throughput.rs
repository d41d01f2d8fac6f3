//! Step-time model: a roofline per op of the traced training step.
//!
//! Each op of the forward pass (and its backward, ~2x the forward's work and traffic, and its
//! recomputation where checkpointed) takes the longer of its compute time and its memory time:
//!
//!   op time  = max(c_compute · FLOPs / peak rate, c_memory · bytes / bandwidth)
//!   step     = accum · (batch · Σ_op op time per sample + c_launch · launched ops) + c_opt · optimizer bytes / bandwidth
//!
//! FLOPs and bytes come from the workload's traced forward pass; peak rates and bandwidth from
//! the GPU catalogue (tensor-core rate for bf16/fp16/tf32 matmuls, CUDA-core fp32 rate otherwise:
//! PyTorch leaves TF32 off by default). The coefficients c (inverse efficiencies; seconds per
//! launched op) are fitted on the measured step times of the calibration file
//! (`calibrate::fit_file`, minimising squared relative error) and checked by a test that refits them.
use serde::Serialize;

use crate::gpu::GpuSpec;
use crate::knobs::{Knobs, Precision};

/// One op's training work per sample: forward + backward (+ recompute).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct OpCost {
    pub flops: f64,
    pub bytes: f64,
}

/// What one training step costs, from the workload.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StepCost {
    pub ops: Vec<OpCost>,
    /// Kernels launched per micro-step (forward, backward, recompute).
    pub launches: f64,
    /// Bytes the optimizer step reads and writes (per step).
    pub optimizer_bytes: f64,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Coefficients {
    /// Inverse efficiency of tensor-core matmuls (bf16/fp16/tf32).
    pub tensor_core: f64,
    /// Inverse efficiency of fp32 CUDA-core matmuls.
    pub cuda_core: f64,
    /// Inverse efficiency of memory traffic.
    pub memory: f64,
    /// Seconds per launched op (kernel launch, Python and autograd overhead).
    pub launch: f64,
    /// Inverse efficiency of the optimizer step's memory traffic.
    pub optimizer: f64,
}

/// Peak rate (FLOP/s) of the units this precision's matmuls run on, and whether they are tensor cores.
pub fn peak_rate(gpu: &GpuSpec, p: Precision) -> (f64, bool) {
    let (tflops, tc) = match p {
        Precision::Fp32 => (gpu.fp32_tflops, false),
        Precision::Tf32 if gpu.tf32_tflops > 0.0 => (gpu.tf32_tflops, true),
        Precision::Tf32 => (gpu.fp32_tflops, false),
        Precision::Bf16Mixed | Precision::Bf16True if gpu.bf16_tflops > 0.0 => {
            (gpu.bf16_tflops, true)
        }
        // No bf16 units (T4, V100): bf16 matmuls are emulated at about the fp32 rate.
        Precision::Bf16Mixed | Precision::Bf16True => (gpu.fp32_tflops, false),
        Precision::Fp16Mixed | Precision::Fp16True => (gpu.fp16_tflops, true),
    };
    (tflops * 1e12, tc)
}

/// Seconds per sample of the ops, at the given inverse efficiencies.
pub fn per_sample_time(ops: &[OpCost], compute_per_flop: f64, memory_per_byte: f64) -> f64 {
    ops.iter()
        .map(|o| (o.flops * compute_per_flop).max(o.bytes * memory_per_byte))
        .sum()
}

/// The step time split into the part that scales with the coefficients' linear terms.
pub struct Terms {
    /// Σ over micro-steps of batch · per-sample roofline time (already includes c_compute, c_memory).
    pub roofline: f64,
    /// Launched ops over the step.
    pub launches: f64,
    /// Optimizer bytes / bandwidth.
    pub optimizer: f64,
}

impl Coefficients {
    pub fn terms(&self, cost: &StepCost, k: &Knobs, gpu: &GpuSpec) -> Terms {
        let (rate, tc) = peak_rate(gpu, k.precision);
        let c = if tc { self.tensor_core } else { self.cuda_core };
        let bw = gpu.bandwidth_gbs * 1e9;
        let per = per_sample_time(&cost.ops, c / rate, self.memory / bw);
        Terms {
            roofline: per * (k.batch * k.grad_accum) as f64,
            launches: cost.launches * k.grad_accum as f64,
            optimizer: cost.optimizer_bytes / bw,
        }
    }

    /// Predicted seconds per optimizer step.
    pub fn step_time(&self, cost: &StepCost, k: &Knobs, gpu: &GpuSpec) -> f64 {
        let t = self.terms(cost, k, gpu);
        t.roofline + self.launch * t.launches + self.optimizer * t.optimizer
    }
}

/// One measured row for fitting.
pub struct FitRow<'a> {
    pub cost: &'a StepCost,
    pub knobs: &'a Knobs,
    pub measured_s: f64,
}

/// Sum of squared relative errors, with the two linear coefficients (launch, optimizer) solved
/// by non-negative least squares for the given three roofline coefficients.
fn objective(rows: &[FitRow], gpu: &GpuSpec, c: &mut Coefficients) -> f64 {
    let terms: Vec<(Terms, f64)> = rows
        .iter()
        .map(|r| (c.terms(r.cost, r.knobs, gpu), r.measured_s))
        .collect();
    // residual r_i = (roofline + L·launch + O·opt − t)/t; minimise over L, O >= 0 (2x2 normal equations)
    let (mut a11, mut a12, mut a22, mut b1, mut b2) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (t, m) in &terms {
        let (x1, x2, y) = (t.launches / m, t.optimizer / m, 1.0 - t.roofline / m);
        a11 += x1 * x1;
        a12 += x1 * x2;
        a22 += x2 * x2;
        b1 += x1 * y;
        b2 += x2 * y;
    }
    let det = a11 * a22 - a12 * a12;
    let (mut l, mut o) = if det.abs() > 1e-30 {
        ((b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det)
    } else {
        (0.0, 0.0)
    };
    if l < 0.0 || o < 0.0 {
        // one of them on the boundary: best single-variable solutions
        let l_only = if a11 > 0.0 { (b1 / a11).max(0.0) } else { 0.0 };
        let o_only = if a22 > 0.0 { (b2 / a22).max(0.0) } else { 0.0 };
        let f = |l: f64, o: f64| {
            terms
                .iter()
                .map(|(t, m)| ((t.roofline + l * t.launches + o * t.optimizer - m) / m).powi(2))
                .sum::<f64>()
        };
        (l, o) = if f(l_only, 0.0) <= f(0.0, o_only) {
            (l_only, 0.0)
        } else {
            (0.0, o_only)
        };
    }
    c.launch = l;
    c.optimizer = o;
    terms
        .iter()
        .map(|(t, m)| ((t.roofline + l * t.launches + o * t.optimizer - m) / m).powi(2))
        .sum()
}

/// Fits the coefficients: golden-section search on the log of each roofline coefficient in turn
/// (the max() makes the problem non-linear), the linear ones solved exactly inside.
pub fn fit(rows: &[FitRow], gpu: &GpuSpec) -> Coefficients {
    let mut c = Coefficients {
        tensor_core: 2.0,
        cuda_core: 1.5,
        memory: 1.5,
        launch: 0.0,
        optimizer: 1.0,
    };
    let set = |c: &mut Coefficients, j: usize, v: f64| match j {
        0 => c.tensor_core = v,
        1 => c.cuda_core = v,
        _ => c.memory = v,
    };
    for _sweep in 0..8 {
        for j in 0..3 {
            // efficiencies between 100% and 1% of peak: c in [1, 100]
            let (mut lo, mut hi) = (0.0_f64, 100.0_f64.ln());
            let g = 0.618_033_988_7;
            let eval = |x: f64, c: &mut Coefficients| {
                set(c, j, x.exp());
                objective(rows, gpu, c)
            };
            let mut x1 = hi - g * (hi - lo);
            let mut x2 = lo + g * (hi - lo);
            let mut f1 = eval(x1, &mut c);
            let mut f2 = eval(x2, &mut c);
            for _ in 0..40 {
                if f1 <= f2 {
                    hi = x2;
                    x2 = x1;
                    f2 = f1;
                    x1 = hi - g * (hi - lo);
                    f1 = eval(x1, &mut c);
                } else {
                    lo = x1;
                    x1 = x2;
                    f1 = f2;
                    x2 = lo + g * (hi - lo);
                    f2 = eval(x2, &mut c);
                }
            }
            let best = if f1 <= f2 { x1 } else { x2 };
            set(&mut c, j, best.exp());
            objective(rows, gpu, &mut c);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{Attention, Checkpointing, Optimizer, Sharding};

    fn knobs(p: Precision, batch: u64) -> Knobs {
        Knobs {
            batch,
            grad_accum: 1,
            precision: p,
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

    #[test]
    fn fit_recovers_known_coefficients() {
        let g = crate::gpu::lookup("h100").unwrap();
        let truth = Coefficients {
            tensor_core: 3.0,
            cuda_core: 1.4,
            memory: 2.0,
            launch: 2e-5,
            optimizer: 1.5,
        };
        let mut costs = Vec::new();
        let mut ks = Vec::new();
        for i in 0..24 {
            let f = i as f64;
            costs.push(StepCost {
                ops: vec![
                    OpCost {
                        flops: 1e9 * (1.0 + f),
                        bytes: 1e6 * (1.0 + f % 3.0),
                    },
                    OpCost {
                        flops: 0.0,
                        bytes: 5e7 * (1.0 + f % 5.0),
                    },
                ],
                launches: 500.0 * (1.0 + f % 4.0),
                optimizer_bytes: 1e9 * (1.0 + f % 2.0),
            });
            let p = [Precision::Fp32, Precision::Bf16Mixed][i % 2];
            ks.push(knobs(p, 1 + i as u64 % 7));
        }
        let rows: Vec<FitRow> = costs
            .iter()
            .zip(&ks)
            .map(|(c, k)| FitRow {
                cost: c,
                knobs: k,
                measured_s: truth.step_time(c, k, g),
            })
            .collect();
        let c = fit(&rows, g);
        let err: f64 = rows
            .iter()
            .map(|r| (c.step_time(r.cost, r.knobs, g) / r.measured_s - 1.0).abs())
            .fold(0.0, f64::max);
        assert!(err < 0.01, "max relative error {err}, fitted {c:?}");
    }

    #[test]
    fn roofline_takes_the_slower_of_compute_and_memory() {
        let ops = [
            OpCost {
                flops: 100.0,
                bytes: 1.0,
            },
            OpCost {
                flops: 0.0,
                bytes: 10.0,
            },
        ];
        assert_eq!(per_sample_time(&ops, 1.0, 1.0), 110.0);
        assert_eq!(per_sample_time(&ops, 0.01, 1.0), 1.0 + 10.0);
    }

    #[test]
    fn fp32_runs_on_cuda_cores_and_bf16_on_tensor_cores() {
        let g = crate::gpu::lookup("h100").unwrap();
        assert_eq!(peak_rate(g, Precision::Fp32), (67e12, false));
        assert_eq!(peak_rate(g, Precision::Bf16Mixed), (989e12, true));
        let t4 = crate::gpu::lookup("t4").unwrap();
        assert!(!peak_rate(t4, Precision::Bf16Mixed).1);
    }
}
