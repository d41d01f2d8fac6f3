//! Optimizer state and the temporaries of `optimizer.step()`, per optimizer.
use crate::knobs::Optimizer;
use crate::model::graph::{Mode, Param};

/// Bytes the optimizer holds between steps and allocates during a step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OptimizerMemory {
    pub state_bytes: f64,
    /// Extra bytes alive during `step()` besides params, grads and state.
    pub step_temp_bytes: f64,
}

/// bitsandbytes keeps fp32 state for tensors smaller than this (`min_8bit_size`, optim/optimizer.py).
const BNB_MIN_8BIT_SIZE: u64 = 4096;
/// bitsandbytes blockwise quantisation: one fp32 absmax per 256 elements (`blocksize=256` of the
/// 8-bit optimizers' `optimizer_update_8bit_blockwise`).
const BNB_BLOCK: f64 = 256.0;

pub fn optimizer_memory(params: &[Param], opt: Optimizer, mode: Mode) -> OptimizerMemory {
    let pb = mode.param_dt().bytes();
    let trainable: Vec<&Param> = params.iter().filter(|p| p.trainable).collect();
    let n: f64 = trainable.iter().map(|p| p.elems() as f64).sum();
    let largest: f64 = trainable
        .iter()
        .map(|p| p.elems() as f64)
        .fold(0.0, f64::max);
    match opt {
        // torch.optim.AdamW/Adam, foreach (the default on CUDA): exp_avg + exp_avg_sq like the
        // params; `_multi_tensor_adam` builds `exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)`,
        // one temporary the size of all params of the group, before `_foreach_addcdiv_`.
        Optimizer::Adamw | Optimizer::Adam => OptimizerMemory {
            state_bytes: 2.0 * n * pb,
            step_temp_bytes: n * pb,
        },
        // fused=True: one kernel per tensor list, in place (`_fused_adamw_`), no temporaries.
        Optimizer::AdamwFused => OptimizerMemory {
            state_bytes: 2.0 * n * pb,
            step_temp_bytes: 0.0,
        },
        // SGD: no state; `_foreach_add_(params, grads, alpha=-lr)` in place.
        Optimizer::Sgd => OptimizerMemory::default(),
        // SGD momentum: one momentum buffer per param (`torch.clone(grad)` at the first step),
        // updated in place.
        Optimizer::SgdMomentum => OptimizerMemory {
            state_bytes: n * pb,
            step_temp_bytes: 0.0,
        },
        // Adafactor (torch.optim.Adafactor / transformers): factored second moment for matrices
        // (a row and a column vector, fp32), full for vectors, no first moment by default; the
        // update of one tensor at a time needs ~2 temporaries of that tensor (grad^2 and the update).
        Optimizer::Adafactor => {
            let state: f64 = trainable
                .iter()
                .map(|p| {
                    if p.matrix && p.rows > 1 && p.cols > 1 {
                        (p.rows + p.cols) as f64 * 4.0
                    } else {
                        p.elems() as f64 * 4.0
                    }
                })
                .sum();
            OptimizerMemory {
                state_bytes: state,
                step_temp_bytes: 2.0 * largest * 4.0,
            }
        }
        // bitsandbytes AdamW8bit: two uint8 states + fp32 absmax per block; small tensors keep
        // fp32 state; the update is one fused kernel per tensor.
        Optimizer::Adamw8bit => {
            let state: f64 = trainable
                .iter()
                .map(|p| {
                    let e = p.elems();
                    if e < BNB_MIN_8BIT_SIZE {
                        8.0 * e as f64
                    } else {
                        2.0 * e as f64 + 2.0 * 4.0 * (e as f64 / BNB_BLOCK).ceil()
                    }
                })
                .sum();
            OptimizerMemory {
                state_bytes: state,
                step_temp_bytes: 0.0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(rows: u64, cols: u64) -> Param {
        Param {
            path: "w".into(),
            rows,
            cols,
            trainable: true,
            matrix: true,
        }
    }

    #[test]
    fn adam_is_two_copies_and_a_temporary() {
        let m = optimizer_memory(&[p(1000, 1000)], Optimizer::Adamw, Mode::Fp32);
        assert_eq!(m.state_bytes, 8e6);
        assert_eq!(m.step_temp_bytes, 4e6);
        let f = optimizer_memory(&[p(1000, 1000)], Optimizer::AdamwFused, Mode::Fp32);
        assert_eq!(f.step_temp_bytes, 0.0);
        let h = optimizer_memory(&[p(1000, 1000)], Optimizer::Adamw, Mode::HalfTrue);
        assert_eq!(h.state_bytes, 4e6);
    }

    #[test]
    fn adafactor_factors_matrices() {
        let m = optimizer_memory(&[p(1000, 1000)], Optimizer::Adafactor, Mode::Fp32);
        assert_eq!(m.state_bytes, 8000.0);
        let e = optimizer_memory(&[p(1000, 1000)], Optimizer::Adamw8bit, Mode::Fp32);
        assert!(e.state_bytes > 2e6 && e.state_bytes < 2.1e6);
    }
}
