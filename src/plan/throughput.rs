//! Step-time model: a roofline per training step.
//!
//! time = c_tc·(tensor-core FLOPs / peak rate) + c_fp32·(CUDA-core FLOPs / peak rate)
//!      + c_mem·(bytes moved / bandwidth) + c_launch·(micro-steps × ops) + c_opt·(optimizer bytes / bandwidth)
//!
//! The FLOPs and bytes come from the workload (`StepCost`); the peak rates and bandwidth from the
//! GPU catalogue; the coefficients c (inverse efficiencies, and seconds per launched op) are
//! fitted once on the measured step times of the calibration file with non-negative least squares
//! on relative error, and checked by a test that refits them (`fitted_coefficients_are_current`).
//! PyTorch leaves TF32 off by default, so `fp32` runs on CUDA cores at the fp32 rate.
use serde::Serialize;

use crate::gpu::GpuSpec;
use crate::knobs::{Knobs, Precision};

/// What one training step of one sample costs, from the workload.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StepCost {
    /// Forward + backward (2x forward) + checkpoint recompute FLOPs per sample.
    pub train_flops_per_sample: f64,
    /// Bytes read and written per sample by memory-bound ops (elementwise, norms, softmax,
    /// eager attention matrices), forward and backward.
    pub memory_bytes_per_sample: f64,
    /// Kernels launched per micro-step (forward + backward), for the fixed per-op cost.
    pub ops_per_micro_step: f64,
    /// Bytes the optimizer step reads and writes (per step, not per sample).
    pub optimizer_bytes: f64,
}

/// Fitted coefficients (see module doc).
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Coefficients {
    pub tensor_core: f64,
    pub cuda_core: f64,
    pub memory: f64,
    /// Seconds per launched op.
    pub launch: f64,
    pub optimizer: f64,
}

/// Peak rate (FLOP/s) of the units this precision's matmuls run on, and whether those are tensor cores.
pub fn peak_rate(gpu: &GpuSpec, p: Precision) -> (f64, bool) {
    let (tflops, tc) = match p {
        Precision::Fp32 => (gpu.fp32_tflops, false),
        Precision::Tf32 if gpu.tf32_tflops > 0.0 => (gpu.tf32_tflops, true),
        Precision::Tf32 => (gpu.fp32_tflops, false),
        Precision::Bf16Mixed | Precision::Bf16True if gpu.bf16_tflops > 0.0 => {
            (gpu.bf16_tflops, true)
        }
        // No bf16 units (T4, V100): PyTorch emulates bf16 matmuls at roughly the fp32 rate.
        Precision::Bf16Mixed | Precision::Bf16True => (gpu.fp32_tflops, false),
        Precision::Fp16Mixed | Precision::Fp16True => (gpu.fp16_tflops, true),
    };
    (tflops * 1e12, tc)
}

/// Feature vector of one configuration: the seconds each term would take at 100% efficiency.
pub fn features(cost: &StepCost, k: &Knobs, gpu: &GpuSpec) -> [f64; 5] {
    let samples = (k.batch * k.grad_accum) as f64;
    let (rate, tc) = peak_rate(gpu, k.precision);
    let flops_s = cost.train_flops_per_sample * samples / rate;
    let bw = gpu.bandwidth_gbs * 1e9;
    [
        if tc { flops_s } else { 0.0 },
        if tc { 0.0 } else { flops_s },
        cost.memory_bytes_per_sample * samples / bw,
        cost.ops_per_micro_step * k.grad_accum as f64,
        cost.optimizer_bytes / bw,
    ]
}

impl Coefficients {
    pub fn as_array(&self) -> [f64; 5] {
        [
            self.tensor_core,
            self.cuda_core,
            self.memory,
            self.launch,
            self.optimizer,
        ]
    }
    pub fn from_array(a: [f64; 5]) -> Self {
        Coefficients {
            tensor_core: a[0],
            cuda_core: a[1],
            memory: a[2],
            launch: a[3],
            optimizer: a[4],
        }
    }
    /// Predicted seconds per optimizer step.
    pub fn step_time(&self, cost: &StepCost, k: &Knobs, gpu: &GpuSpec) -> f64 {
        let f = features(cost, k, gpu);
        self.as_array().iter().zip(f).map(|(c, x)| c * x).sum()
    }
}

/// Non-negative least squares on relative error: minimise Σ ((c·x_i − t_i) / t_i)² with c ≥ 0,
/// by cyclic coordinate descent (5 unknowns, tens of rows: converges in a few hundred sweeps).
pub fn fit(rows: &[([f64; 5], f64)]) -> [f64; 5] {
    let scaled: Vec<([f64; 5], f64)> = rows
        .iter()
        .filter(|(_, t)| *t > 0.0)
        .map(|(x, t)| {
            let mut s = [0.0; 5];
            for j in 0..5 {
                s[j] = x[j] / t;
            }
            (s, 1.0)
        })
        .collect();
    let mut c = [0.0_f64; 5];
    for _ in 0..5000 {
        let mut moved = 0.0_f64;
        for j in 0..5 {
            let (mut num, mut den) = (0.0, 0.0);
            for (x, y) in &scaled {
                let pred_wo: f64 = (0..5).filter(|&i| i != j).map(|i| c[i] * x[i]).sum();
                num += x[j] * (y - pred_wo);
                den += x[j] * x[j];
            }
            let new = if den > 0.0 { (num / den).max(0.0) } else { 0.0 };
            moved = moved.max((new - c[j]).abs() / (c[j].abs() + 1e-12));
            c[j] = new;
        }
        if moved < 1e-10 {
            break;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_known_coefficients() {
        let truth = [2.5, 1.4, 3.0, 1e-5, 1.2];
        let mut rows = Vec::new();
        for i in 0..30 {
            let f = i as f64;
            let x = [
                0.01 * (f % 5.0),
                0.02 * ((f + 2.0) % 3.0),
                0.003 * (f % 7.0 + 1.0),
                100.0 * (1.0 + f % 4.0),
                0.001 * (f % 2.0),
            ];
            let t: f64 = truth.iter().zip(x).map(|(c, x)| c * x).sum();
            rows.push((x, t));
        }
        let c = fit(&rows);
        for j in 0..5 {
            assert!(
                (c[j] - truth[j]).abs() / truth[j] < 1e-3,
                "{j}: {} vs {}",
                c[j],
                truth[j]
            );
        }
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
