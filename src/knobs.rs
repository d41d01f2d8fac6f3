//! The training knobs shared by `estimate`, `plan`, `fix` and `validate` rows (see DESIGN.md).
//! Names follow Lightning's precision names; Lightning's own spellings are accepted as aliases.
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    #[value(name = "fp32", alias = "32-true", alias = "32")]
    Fp32,
    /// fp32 storage, TF32 tensor-core matmuls (`torch.backends.cuda.matmul.allow_tf32 = True`).
    #[value(name = "tf32")]
    Tf32,
    /// fp32 weights, bf16 autocast.
    #[value(name = "bf16-mixed", alias = "bf16")]
    Bf16Mixed,
    /// fp32 weights, fp16 autocast + GradScaler.
    #[value(name = "fp16-mixed", alias = "16-mixed", alias = "fp16", alias = "16")]
    Fp16Mixed,
    /// Weights, gradients and optimizer state all in bf16 (`model.to(torch.bfloat16)`).
    #[value(name = "bf16-true")]
    Bf16True,
    /// Weights, gradients and optimizer state all in fp16.
    #[value(name = "fp16-true", alias = "16-true")]
    Fp16True,
}

impl Precision {
    pub fn is_mixed(self) -> bool {
        matches!(self, Precision::Bf16Mixed | Precision::Fp16Mixed)
    }
    /// Bytes of a parameter as stored.
    pub fn param_bytes(self) -> u64 {
        match self {
            Precision::Bf16True | Precision::Fp16True => 2,
            _ => 4,
        }
    }
    /// Bytes of an activation element produced by the matmul-heavy ops.
    pub fn compute_bytes(self) -> u64 {
        match self {
            Precision::Fp32 | Precision::Tf32 => 4,
            _ => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::Fp16Mixed => "fp16-mixed",
            Precision::Bf16True => "bf16-true",
            Precision::Fp16True => "fp16-true",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Checkpointing {
    #[default]
    None,
    /// Every repeated block.
    Full,
    /// Only the blocks named by `--checkpoint-modules`.
    Selective,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Attention {
    /// softmax(QK^T)V in separate ops: keeps the [b, heads, s, s] probabilities for backward.
    Eager,
    /// `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels).
    Sdpa,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// torch.optim.AdamW, foreach implementation (the default on CUDA).
    #[default]
    Adamw,
    #[value(name = "adamw-fused")]
    AdamwFused,
    Adam,
    Sgd,
    #[value(name = "sgd-momentum")]
    SgdMomentum,
    Adafactor,
    #[value(name = "adamw-8bit")]
    #[serde(rename = "adamw-8bit")]
    Adamw8bit,
}

impl Optimizer {
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Adamw => "adamw",
            Optimizer::AdamwFused => "adamw-fused",
            Optimizer::Adam => "adam",
            Optimizer::Sgd => "sgd",
            Optimizer::SgdMomentum => "sgd-momentum",
            Optimizer::Adafactor => "adafactor",
            Optimizer::Adamw8bit => "adamw-8bit",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    CausalLm,
    MaskedLm,
    Seq2seqLm,
    ImageClassification,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Sharding {
    #[default]
    None,
    Zero1,
    Zero2,
    Zero3,
    Fsdp,
}

/// The knob flags as given on the command line (or in a measurement row). `None` = not given,
/// so that the model can supply its own default and `plan` knows what the user fixed.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct KnobArgs {
    /// Micro-batch size per GPU.
    #[arg(long)]
    pub batch: Option<u64>,
    /// Gradient accumulation steps.
    #[arg(long)]
    pub grad_accum: Option<u64>,
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    #[arg(long, value_enum)]
    pub checkpointing: Option<Checkpointing>,
    /// Module paths checkpointed with `--checkpointing selective`, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub checkpoint_modules: Vec<String>,
    #[arg(long, value_enum)]
    pub attention: Option<Attention>,
    #[arg(long, value_enum)]
    pub optimizer: Option<Optimizer>,
    #[arg(long)]
    pub seq_len: Option<u64>,
    #[arg(long)]
    pub target_len: Option<u64>,
    #[arg(long)]
    pub image_size: Option<u64>,
    #[arg(long)]
    pub num_classes: Option<u64>,
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    #[arg(long)]
    pub lora_rank: Option<u64>,
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// Number of GPUs (data parallel).
    #[arg(long)]
    pub gpus: Option<u64>,
    #[arg(long, value_enum)]
    pub sharding: Option<Sharding>,
}

/// A fully resolved training configuration: every knob has a value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Knobs {
    pub batch: u64,
    pub grad_accum: u64,
    pub precision: Precision,
    pub checkpointing: Checkpointing,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub checkpoint_modules: Vec<String>,
    pub attention: Attention,
    pub optimizer: Optimizer,
    pub gpus: u64,
    pub sharding: Sharding,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lora_rank: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub lora_targets: Vec<String>,
}

/// Model-dependent defaults used where a knob was not given.
#[derive(Clone, Debug)]
pub struct KnobDefaults {
    pub batch: u64,
    pub attention: Attention,
}

impl KnobArgs {
    /// Resolves the given flags against the model's defaults and checks they make sense.
    pub fn resolve(&self, defaults: &KnobDefaults) -> Result<Knobs> {
        let batch = self.batch.unwrap_or(defaults.batch);
        if batch == 0 {
            return Err(Error::input("--batch must be at least 1"));
        }
        let grad_accum = self.grad_accum.unwrap_or(1);
        if grad_accum == 0 {
            return Err(Error::input("--grad-accum must be at least 1"));
        }
        let gpus = self.gpus.unwrap_or(1);
        if gpus == 0 {
            return Err(Error::input("--gpus must be at least 1"));
        }
        // beyond the largest clusters; the sharding arithmetic needs no more
        const MAX_GPUS: u64 = 1 << 16;
        if gpus > MAX_GPUS {
            return Err(Error::input(format!(
                "--gpus must be at most {MAX_GPUS} (is {gpus})"
            )));
        }
        let checkpointing = self.checkpointing.unwrap_or_default();
        if checkpointing == Checkpointing::Selective && self.checkpoint_modules.is_empty() {
            return Err(Error::input(
                "--checkpointing selective needs --checkpoint-modules (module paths, e.g. rgb_model.blocks)",
            ));
        }
        if checkpointing != Checkpointing::Selective && !self.checkpoint_modules.is_empty() {
            return Err(Error::input(
                "--checkpoint-modules only applies with --checkpointing selective",
            ));
        }
        if self.lora_rank == Some(0) {
            return Err(Error::input("--lora-rank must be at least 1"));
        }
        let max_rank = crate::model::limits::MAX_WIDTH;
        if let Some(r) = self.lora_rank.filter(|r| *r > max_rank) {
            return Err(Error::input(format!(
                "--lora-rank must be at most {max_rank} (is {r})"
            )));
        }
        Ok(Knobs {
            batch,
            grad_accum,
            precision: self.precision.unwrap_or(Precision::Fp32),
            checkpointing,
            checkpoint_modules: self.checkpoint_modules.clone(),
            attention: self.attention.unwrap_or(defaults.attention),
            optimizer: self.optimizer.unwrap_or_default(),
            gpus,
            sharding: self.sharding.unwrap_or_default(),
            lora_rank: self.lora_rank,
            lora_targets: self.lora_targets.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        k: KnobArgs,
    }

    fn defaults() -> KnobDefaults {
        KnobDefaults {
            batch: 16,
            attention: Attention::Eager,
        }
    }

    #[test]
    fn accepts_lightning_names() {
        let t = T::try_parse_from(["t", "--precision", "16-mixed"]).unwrap();
        assert_eq!(t.k.precision, Some(Precision::Fp16Mixed));
        let t = T::try_parse_from(["t", "--precision", "32-true"]).unwrap();
        assert_eq!(t.k.precision, Some(Precision::Fp32));
        let t = T::try_parse_from(["t", "--precision", "bf16-true"]).unwrap();
        assert_eq!(t.k.precision, Some(Precision::Bf16True));
    }

    #[test]
    fn rejects_impossible_knobs() {
        let t = T::try_parse_from(["t", "--batch", "0"]).unwrap();
        assert!(t.k.resolve(&defaults()).is_err());
        let t = T::try_parse_from(["t", "--checkpointing", "selective"]).unwrap();
        assert!(t.k.resolve(&defaults()).is_err());
    }

    #[test]
    fn resolves_defaults() {
        let t = T::try_parse_from([
            "t",
            "--checkpoint-modules",
            "a,b",
            "--checkpointing",
            "selective",
        ])
        .unwrap();
        let k = t.k.resolve(&defaults()).unwrap();
        assert_eq!(k.batch, 16);
        assert_eq!(k.checkpoint_modules, vec!["a", "b"]);
        assert_eq!(serde_json::to_value(k.precision).unwrap(), "fp32");
        assert_eq!(
            serde_json::to_value(Optimizer::Adamw8bit).unwrap(),
            "adamw-8bit"
        );
    }
}
