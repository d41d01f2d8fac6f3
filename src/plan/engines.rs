//! Configuration files of the engines users move to when one GPU is not enough: a DeepSpeed JSON
//! config for ZeRO stages and an accelerate config for FSDP. oomdoc emits the engine's own
//! configuration rather than inventing a scheme of its own.
use serde_json::{json, Value};

use crate::knobs::{Knobs, Precision, Sharding};

/// DeepSpeed config (https://www.deepspeed.ai/docs/config-json/) for ZeRO stage 1–3.
/// `offload` moves optimizer state (and for stage 3 parameters) to CPU memory.
pub fn deepspeed_config(k: &Knobs, offload: bool) -> Option<Value> {
    let stage = match k.sharding {
        Sharding::Zero1 => 1,
        Sharding::Zero2 => 2,
        Sharding::Zero3 => 3,
        Sharding::None | Sharding::Fsdp => return None,
    };
    let mut zero = json!({
        "stage": stage,
        "overlap_comm": true,
        "contiguous_gradients": true,
    });
    if offload {
        zero["offload_optimizer"] = json!({"device": "cpu", "pin_memory": true});
        if stage == 3 {
            zero["offload_param"] = json!({"device": "cpu", "pin_memory": true});
        }
    }
    let mut cfg = json!({
        "train_micro_batch_size_per_gpu": k.batch,
        "gradient_accumulation_steps": k.grad_accum,
        "train_batch_size": k.batch * k.grad_accum * k.gpus,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
    });
    match k.precision {
        Precision::Bf16Mixed | Precision::Bf16True => cfg["bf16"] = json!({"enabled": true}),
        Precision::Fp16Mixed | Precision::Fp16True => {
            cfg["fp16"] = json!({"enabled": true, "loss_scale": 0, "initial_scale_power": 16})
        }
        _ => {}
    }
    Some(cfg)
}

/// accelerate config (YAML, as `accelerate config` writes it) for FSDP with full sharding.
pub fn accelerate_fsdp_config(k: &Knobs) -> Option<String> {
    if k.sharding != Sharding::Fsdp {
        return None;
    }
    let mixed = match k.precision {
        Precision::Bf16Mixed | Precision::Bf16True => "bf16",
        Precision::Fp16Mixed | Precision::Fp16True => "fp16",
        _ => "no",
    };
    Some(format!(
        "compute_environment: LOCAL_MACHINE\n\
         distributed_type: FSDP\n\
         mixed_precision: {mixed}\n\
         num_machines: 1\n\
         num_processes: {gpus}\n\
         fsdp_config:\n\
         \x20 fsdp_sharding_strategy: FULL_SHARD\n\
         \x20 fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n\
         \x20 fsdp_state_dict_type: SHARDED_STATE_DICT\n\
         \x20 fsdp_offload_params: false\n\
         \x20 fsdp_activation_checkpointing: {ckpt}\n\
         \x20 fsdp_use_orig_params: true\n",
        gpus = k.gpus,
        ckpt = k.checkpointing != crate::knobs::Checkpointing::None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{Attention, Checkpointing, Optimizer};

    fn knobs(sharding: Sharding) -> Knobs {
        Knobs {
            batch: 8,
            grad_accum: 2,
            precision: Precision::Bf16Mixed,
            checkpointing: Checkpointing::Full,
            checkpoint_modules: vec![],
            attention: Attention::Sdpa,
            optimizer: Optimizer::Adamw,
            gpus: 4,
            sharding,
            lora_rank: None,
            lora_targets: vec![],
        }
    }

    #[test]
    fn deepspeed_has_consistent_batch_sizes() {
        let c = deepspeed_config(&knobs(Sharding::Zero3), true).unwrap();
        assert_eq!(c["train_batch_size"], 64);
        assert_eq!(c["zero_optimization"]["stage"], 3);
        assert_eq!(c["zero_optimization"]["offload_param"]["device"], "cpu");
        assert_eq!(c["bf16"]["enabled"], true);
        assert!(deepspeed_config(&knobs(Sharding::None), false).is_none());
    }

    #[test]
    fn accelerate_fsdp_yaml() {
        let y = accelerate_fsdp_config(&knobs(Sharding::Fsdp)).unwrap();
        assert!(y.contains("distributed_type: FSDP\n"));
        assert!(y.contains("num_processes: 4\n"));
        assert!(y.contains("  fsdp_activation_checkpointing: true\n"));
    }
}
