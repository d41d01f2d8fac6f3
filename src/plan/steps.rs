//! Implementation steps: the code a user writes to apply a configuration, per framework.
//! Snippets are code (language-neutral); the report adds the explanations in the user's language.
use serde::Serialize;

use crate::knobs::{Attention, Checkpointing, Knobs, Optimizer, Precision};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framework {
    HfTrainer,
    Lightning,
    PlainPytorch,
    Deepspeed,
    Accelerate,
}

impl Framework {
    pub const ALL: [Framework; 5] = [
        Framework::HfTrainer,
        Framework::Lightning,
        Framework::PlainPytorch,
        Framework::Deepspeed,
        Framework::Accelerate,
    ];
    pub fn title(self) -> &'static str {
        match self {
            Framework::HfTrainer => "Hugging Face Trainer",
            Framework::Lightning => "PyTorch Lightning",
            Framework::PlainPytorch => "plain PyTorch",
            Framework::Deepspeed => "DeepSpeed",
            Framework::Accelerate => "Hugging Face accelerate",
        }
    }
}

/// One snippet: the code language and the text.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Snippet {
    pub framework: Framework,
    pub lang: &'static str,
    pub code: String,
}

fn changed<T: PartialEq>(a: &T, b: &T) -> bool {
    a != b
}

/// Code that turns `base` into `target` for each framework. Only changed knobs appear.
pub fn snippets(base: &Knobs, target: &Knobs) -> Vec<Snippet> {
    Framework::ALL
        .iter()
        .map(|&f| Snippet {
            framework: f,
            lang: lang_of(f),
            code: snippet(f, base, target),
        })
        .collect()
}

fn lang_of(f: Framework) -> &'static str {
    match f {
        Framework::Deepspeed => "json",
        _ => "python",
    }
}

fn snippet(f: Framework, base: &Knobs, t: &Knobs) -> String {
    let mut lines: Vec<String> = Vec::new();
    let prec = changed(&base.precision, &t.precision);
    let batch = changed(&base.batch, &t.batch);
    let accum = changed(&base.grad_accum, &t.grad_accum);
    let ckpt = changed(&base.checkpointing, &t.checkpointing)
        || changed(&base.checkpoint_modules, &t.checkpoint_modules);
    let attn = changed(&base.attention, &t.attention);
    let opt = changed(&base.optimizer, &t.optimizer);
    match f {
        Framework::HfTrainer => {
            lines.push("TrainingArguments(".into());
            if batch {
                lines.push(format!("    per_device_train_batch_size={},", t.batch));
            }
            if accum {
                lines.push(format!("    gradient_accumulation_steps={},", t.grad_accum));
            }
            if prec {
                match t.precision {
                    Precision::Bf16Mixed => lines.push("    bf16=True,".into()),
                    Precision::Fp16Mixed => lines.push("    fp16=True,".into()),
                    Precision::Tf32 => lines.push("    tf32=True,".into()),
                    Precision::Bf16True => lines.push(
                        "    bf16=True,  # and load the model with torch_dtype=torch.bfloat16"
                            .into(),
                    ),
                    Precision::Fp16True => lines.push(
                        "    fp16=True,  # and load the model with torch_dtype=torch.float16"
                            .into(),
                    ),
                    Precision::Fp32 => lines.push("    bf16=False, fp16=False,".into()),
                }
            }
            if ckpt && t.checkpointing == Checkpointing::Full {
                lines.push("    gradient_checkpointing=True,  # needs model.supports_gradient_checkpointing".into());
                lines.push("    gradient_checkpointing_kwargs={\"use_reentrant\": False},".into());
            }
            if opt {
                lines.push(format!("    optim=\"{}\",", hf_optim(t.optimizer)));
            }
            lines.push("    ...,".into());
            lines.push(")".into());
            if ckpt && t.checkpointing == Checkpointing::Selective {
                lines.push(checkpoint_wrap(&t.checkpoint_modules));
            }
            if attn && t.attention == Attention::Sdpa {
                lines.push(
                    "model = AutoModel.from_pretrained(..., attn_implementation=\"sdpa\")".into(),
                );
            }
        }
        Framework::Lightning => {
            lines.push("trainer = L.Trainer(".into());
            if prec {
                lines.push(format!(
                    "    precision=\"{}\",",
                    lightning_precision(t.precision)
                ));
            }
            if accum {
                lines.push(format!("    accumulate_grad_batches={},", t.grad_accum));
            }
            lines.push("    ...,".into());
            lines.push(")".into());
            if batch {
                lines.push(format!(
                    "train_loader = DataLoader(dataset, batch_size={}, ...)",
                    t.batch
                ));
            }
            if ckpt {
                lines.push(checkpoint_wrap(&t.checkpoint_modules));
            }
            if opt {
                lines.push(format!(
                    "# in configure_optimizers():\n{}",
                    torch_optimizer(t.optimizer)
                ));
            }
        }
        Framework::PlainPytorch => {
            if batch {
                lines.push(format!(
                    "loader = DataLoader(dataset, batch_size={}, ...)",
                    t.batch
                ));
            }
            if opt {
                lines.push(torch_optimizer(t.optimizer));
            }
            if ckpt {
                lines.push(checkpoint_wrap(&t.checkpoint_modules));
            }
            let (ctx, scaler) = match t.precision {
                Precision::Bf16Mixed => ("torch.autocast(\"cuda\", dtype=torch.bfloat16)", false),
                Precision::Fp16Mixed => ("torch.autocast(\"cuda\", dtype=torch.float16)", true),
                _ => ("contextlib.nullcontext()", false),
            };
            if t.precision == Precision::Tf32 {
                lines.push("torch.backends.cuda.matmul.allow_tf32 = True\ntorch.backends.cudnn.allow_tf32 = True".into());
            }
            if matches!(t.precision, Precision::Bf16True | Precision::Fp16True) {
                let dt = if t.precision == Precision::Bf16True {
                    "bfloat16"
                } else {
                    "float16"
                };
                lines.push(format!("model = model.to(torch.{dt})  # weights, gradients and optimizer state in 16 bit"));
            }
            if scaler {
                lines.push("scaler = torch.amp.GradScaler(\"cuda\")".into());
            }
            let k = t.grad_accum;
            let mut lp = String::from("for step, batch in enumerate(loader):\n");
            lp.push_str(&format!(
                "    with {ctx}:\n        loss = compute_loss(model, batch)"
            ));
            if k > 1 {
                lp.push_str(&format!(" / {k}"));
            }
            lp.push('\n');
            lp.push_str(if scaler {
                "    scaler.scale(loss).backward()\n"
            } else {
                "    loss.backward()\n"
            });
            let indent = if k > 1 {
                lp.push_str(&format!("    if (step + 1) % {k} == 0:\n"));
                "        "
            } else {
                "    "
            };
            if scaler {
                lp.push_str(&format!(
                    "{indent}scaler.step(optimizer)\n{indent}scaler.update()\n"
                ));
            } else {
                lp.push_str(&format!("{indent}optimizer.step()\n"));
            }
            lp.push_str(&format!("{indent}optimizer.zero_grad(set_to_none=True)"));
            lines.push(lp);
        }
        Framework::Deepspeed => {
            let mut tk = t.clone();
            if tk.sharding == crate::knobs::Sharding::None
                || tk.sharding == crate::knobs::Sharding::Fsdp
            {
                tk.sharding = crate::knobs::Sharding::Zero1;
            }
            let cfg = super::engines::deepspeed_config(&tk, false).unwrap_or_default();
            lines.push(serde_json::to_string_pretty(&cfg).unwrap_or_default());
        }
        Framework::Accelerate => {
            let mp = match t.precision {
                Precision::Bf16Mixed | Precision::Bf16True => "bf16",
                Precision::Fp16Mixed | Precision::Fp16True => "fp16",
                _ => "no",
            };
            lines.push(format!(
                "accelerator = Accelerator(mixed_precision=\"{mp}\", gradient_accumulation_steps={})",
                t.grad_accum
            ));
            lines.push(
                "model, optimizer, loader = accelerator.prepare(model, optimizer, loader)".into(),
            );
            lines.push(
                "for batch in loader:\n    with accelerator.accumulate(model):\n        loss = compute_loss(model, batch)\n        accelerator.backward(loss)\n        optimizer.step()\n        optimizer.zero_grad()"
                    .into(),
            );
            if batch {
                lines.insert(
                    0,
                    format!("loader = DataLoader(dataset, batch_size={}, ...)", t.batch),
                );
            }
            if ckpt {
                lines.push(checkpoint_wrap(&t.checkpoint_modules));
            }
        }
    }
    if attn && t.attention == Attention::Sdpa && f != Framework::HfTrainer {
        lines.push(
            "# attention: replace softmax(q @ k.transpose(-2, -1) * scale) @ v with\nx = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p if self.training else 0.0, scale=scale)"
                .into(),
        );
    }
    lines.join("\n")
}

fn checkpoint_wrap(modules: &[String]) -> String {
    let target = if modules.is_empty() {
        "self.blocks".to_string()
    } else {
        modules.join(", ")
    };
    format!(
        "# in the model's forward, for each block of {target}:\nfrom torch.utils.checkpoint import checkpoint\nfor blk in self.blocks:\n    x = checkpoint(blk, x, use_reentrant=False) if self.training else blk(x)"
    )
}

fn hf_optim(o: Optimizer) -> &'static str {
    match o {
        Optimizer::Adamw => "adamw_torch",
        Optimizer::AdamwFused => "adamw_torch_fused",
        Optimizer::Adam => "adamw_torch",
        Optimizer::Sgd | Optimizer::SgdMomentum => "sgd",
        Optimizer::Adafactor => "adafactor",
        Optimizer::Adamw8bit => "adamw_bnb_8bit",
    }
}

fn torch_optimizer(o: Optimizer) -> String {
    match o {
        Optimizer::Adamw => "optimizer = torch.optim.AdamW(model.parameters(), lr=lr)".into(),
        Optimizer::AdamwFused => {
            "optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)".into()
        }
        Optimizer::Adam => "optimizer = torch.optim.Adam(model.parameters(), lr=lr)".into(),
        Optimizer::Sgd => "optimizer = torch.optim.SGD(model.parameters(), lr=lr)".into(),
        Optimizer::SgdMomentum => {
            "optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)".into()
        }
        Optimizer::Adafactor => {
            "optimizer = torch.optim.Adafactor(model.parameters(), lr=lr)  # torch >= 2.5".into()
        }
        Optimizer::Adamw8bit => {
            "import bitsandbytes as bnb\noptimizer = bnb.optim.AdamW8bit(model.parameters(), lr=lr)"
                .into()
        }
    }
}

fn lightning_precision(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 | Precision::Tf32 => "32-true",
        Precision::Bf16Mixed => "bf16-mixed",
        Precision::Fp16Mixed => "16-mixed",
        Precision::Bf16True => "bf16-true",
        Precision::Fp16True => "16-true",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Knobs {
        crate::plan::test_knobs(16)
    }

    #[test]
    fn only_changed_knobs_appear() {
        let mut t = base();
        t.precision = Precision::Bf16Mixed;
        let s = snippets(&base(), &t);
        let hf = &s[0].code;
        assert!(hf.contains("bf16=True"));
        assert!(!hf.contains("per_device_train_batch_size"));
        let light = &s[1].code;
        assert!(light.contains("precision=\"bf16-mixed\""));
    }

    #[test]
    fn plain_loop_accumulates_and_scales() {
        let mut t = base();
        t.precision = Precision::Fp16Mixed;
        t.batch = 8;
        t.grad_accum = 2;
        let s = snippets(&base(), &t);
        let plain = &s[2].code;
        assert!(plain.contains("GradScaler"));
        assert!(plain.contains("/ 2"));
        assert!(plain.contains("if (step + 1) % 2 == 0:"));
        assert!(plain.contains("batch_size=8"));
    }
}
