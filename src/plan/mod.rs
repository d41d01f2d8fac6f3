//! `plan`: searching the knobs and ranking what fits by predicted throughput.
pub mod analysis;
pub mod calibrate;
pub mod engines;
pub mod log;
pub mod model_eval;
pub mod report;
pub mod search;
pub mod steps;
pub mod throughput;
pub mod words;

/// The seed's configuration shape for unit tests: fp32, eager attention, AdamW, one GPU.
#[cfg(test)]
pub(crate) fn test_knobs(batch: u64) -> crate::knobs::Knobs {
    use crate::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision, Sharding};
    Knobs {
        batch,
        grad_accum: 1,
        precision: Precision::Fp32,
        checkpointing: Checkpointing::None,
        checkpoint_modules: vec![],
        attention: Attention::Eager,
        optimizer: Optimizer::Adamw,
        gpus: 1,
        sharding: Sharding::None,
        lora_rank: None,
        lora_targets: vec![],
    }
}
