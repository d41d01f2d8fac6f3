//! Built-in models, from the real architectures (torchvision, timm, Hugging Face configs, the
//! NavDP model of `calibration/navdp_model.py`).
use super::arch::{Act, Arch, LmSpec, LmStyle, ResNetSpec, T5Spec, VitSpec};
use super::{workload_toml, ModelDesc};
use crate::error::{Error, Result};
use crate::gpu::catalogue::edit_distance;
use crate::knobs::{Attention, KnobDefaults, Task};

/// Preset names, in the order `--help` lists them.
pub const NAMES: &[&str] = &[
    "navdp",
    "navdp-upstream",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "vit-s16",
    "vit-b16",
    "vit-l16",
    "vit-h14",
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "bert-base",
    "bert-large",
    "llama-2-7b",
    "llama-3-8b",
    "mistral-7b",
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-7b",
    "t5-small",
    "t5-base",
];

pub fn exists(name: &str) -> bool {
    NAMES.contains(&name)
}

fn desc(
    name: &str,
    arch: Arch,
    batch: u64,
    attention: Attention,
    seq: u64,
    task: Task,
) -> ModelDesc {
    ModelDesc {
        name: name.to_string(),
        arch,
        defaults: KnobDefaults { batch, attention },
        seq_len: seq,
        target_len: 128,
        image: 224,
        classes: 1000,
        task,
        buffer_bytes: 0,
        declared_params: None,
    }
}

/// A Hugging Face decoder LM.
#[allow(clippy::too_many_arguments)]
fn llama(
    vocab: u64,
    hidden: u64,
    ffn: u64,
    layers: u64,
    heads: u64,
    kv: u64,
    tied: bool,
    qkv_bias: bool,
) -> Arch {
    Arch::Lm(LmSpec {
        style: LmStyle::Llama,
        vocab,
        hidden,
        layers,
        heads,
        kv_heads: Some(kv),
        head_dim: None,
        ffn,
        act: Act::SwiGlu,
        positions: 0,
        token_types: 0,
        tied_embeddings: tied,
        dropout: 0.0,
        attention_dropout: 0.0,
        qkv_bias,
        bias: false,
    })
}

fn gpt2(hidden: u64, layers: u64, heads: u64) -> Arch {
    Arch::Lm(LmSpec {
        style: LmStyle::Gpt2,
        vocab: 50257,
        hidden,
        layers,
        heads,
        kv_heads: None,
        head_dim: None,
        ffn: 4 * hidden,
        act: Act::GeluNewPython,
        positions: 1024,
        token_types: 0,
        tied_embeddings: true,
        dropout: 0.1,
        attention_dropout: 0.1,
        qkv_bias: true,
        bias: true,
    })
}

fn bert(hidden: u64, layers: u64, heads: u64) -> Arch {
    Arch::Lm(LmSpec {
        style: LmStyle::Bert,
        vocab: 30522,
        hidden,
        layers,
        heads,
        kv_heads: None,
        head_dim: None,
        ffn: 4 * hidden,
        act: Act::Gelu,
        positions: 512,
        token_types: 2,
        tied_embeddings: true,
        dropout: 0.1,
        attention_dropout: 0.1,
        qkv_bias: true,
        bias: true,
    })
}

fn vit(dim: u64, depth: u64, heads: u64, patch: u64) -> Arch {
    Arch::Vit(VitSpec {
        path: String::new(),
        image: 224,
        patch,
        in_chans: 3,
        dim,
        depth,
        heads,
        mlp_ratio: 4.0,
        frames: 1,
        layerscale: false,
        classes: 1000,
        pos_grid: 0,
        mask_token: false,
        frozen: false,
        attention: None,
    })
}

fn resnet(layers: &[u64], bottleneck: bool) -> Arch {
    Arch::Resnet(ResNetSpec {
        layers: layers.to_vec(),
        bottleneck,
        image: 224,
        classes: 1000,
        width_per_group: 64,
    })
}

fn t5(d_model: u64, d_ff: u64, layers: u64, heads: u64) -> Arch {
    Arch::T5(T5Spec {
        vocab: 32128,
        d_model,
        d_kv: 64,
        d_ff,
        layers,
        decoder_layers: layers,
        heads,
        act: Act::Relu,
        tied_embeddings: true,
        dropout: 0.1,
        relative_buckets: 32,
    })
}

/// BatchNorm buffers of a torchvision ResNet: running mean and var (fp32) and num_batches_tracked (int64).
fn resnet_buffers(layers: &[u64], bottleneck: bool) -> u64 {
    let mut ch = 64u64; // bn1
    let exp = if bottleneck { 4 } else { 1 };
    let mut n_bn = 1u64;
    for (i, &n) in layers.iter().enumerate() {
        let planes = 64u64 << i;
        for b in 0..n {
            if bottleneck {
                ch += planes * 2 + planes * exp;
                n_bn += 3;
            } else {
                ch += planes * 2;
                n_bn += 2;
            }
            if b == 0 && (i > 0 || bottleneck) {
                ch += planes * exp;
                n_bn += 1;
            }
        }
    }
    ch * 8 + n_bn * 8
}

pub fn lookup(name: &str) -> Result<ModelDesc> {
    let n = name.trim().to_ascii_lowercase();
    let sdpa = Attention::Sdpa;
    let img = Task::ImageClassification;
    let d = match n.as_str() {
        "navdp" | "navdp-upstream" => {
            let mut d = workload_toml::parse(workload_toml::NAVDP_TOML).map_err(Error::input)?;
            // img_mean, img_std (3+3), tgt_mask 24x24, critic_mask 24x(2+512), alphas_cumprod 10, fp32
            d.buffer_bytes = 51712;
            if n == "navdp-upstream" {
                d.name = "navdp-upstream".into();
                if let Arch::Navdp(s) = &mut d.arch {
                    s.variant = "official".into();
                    s.freeze_rgb = true;
                    s.depth_frames = 1;
                }
                // critic_mask 24 x (4 + 128)
                d.buffer_bytes = (3 + 3 + 24 * 24 + 24 * 132 + 10) * 4;
            }
            d
        }
        "resnet18" => desc(&n, resnet(&[2, 2, 2, 2], false), 128, sdpa, 0, img),
        "resnet34" => desc(&n, resnet(&[3, 4, 6, 3], false), 128, sdpa, 0, img),
        "resnet50" => desc(&n, resnet(&[3, 4, 6, 3], true), 64, sdpa, 0, img),
        "resnet101" => desc(&n, resnet(&[3, 4, 23, 3], true), 64, sdpa, 0, img),
        "resnet152" => desc(&n, resnet(&[3, 8, 36, 3], true), 64, sdpa, 0, img),
        "vit-s16" => desc(&n, vit(384, 12, 6, 16), 64, sdpa, 0, img),
        "vit-b16" => desc(&n, vit(768, 12, 12, 16), 64, sdpa, 0, img),
        "vit-l16" => desc(&n, vit(1024, 24, 16, 16), 32, sdpa, 0, img),
        "vit-h14" => desc(&n, vit(1280, 32, 16, 14), 16, sdpa, 0, img),
        "gpt2" => desc(&n, gpt2(768, 12, 12), 8, sdpa, 1024, Task::CausalLm),
        "gpt2-medium" => desc(&n, gpt2(1024, 24, 16), 8, sdpa, 1024, Task::CausalLm),
        "gpt2-large" => desc(&n, gpt2(1280, 36, 20), 4, sdpa, 1024, Task::CausalLm),
        "gpt2-xl" => desc(&n, gpt2(1600, 48, 25), 2, sdpa, 1024, Task::CausalLm),
        "bert-base" => desc(&n, bert(768, 12, 12), 16, sdpa, 512, Task::MaskedLm),
        "bert-large" => desc(&n, bert(1024, 24, 16), 8, sdpa, 512, Task::MaskedLm),
        "llama-2-7b" => desc(
            &n,
            llama(32000, 4096, 11008, 32, 32, 32, false, false),
            1,
            sdpa,
            4096,
            Task::CausalLm,
        ),
        "llama-3-8b" => desc(
            &n,
            llama(128256, 4096, 14336, 32, 32, 8, false, false),
            1,
            sdpa,
            8192,
            Task::CausalLm,
        ),
        "mistral-7b" => desc(
            &n,
            llama(32000, 4096, 14336, 32, 32, 8, false, false),
            1,
            sdpa,
            4096,
            Task::CausalLm,
        ),
        "qwen2.5-0.5b" => desc(
            &n,
            llama(151936, 896, 4864, 24, 14, 2, true, true),
            4,
            sdpa,
            2048,
            Task::CausalLm,
        ),
        "qwen2.5-1.5b" => desc(
            &n,
            llama(151936, 1536, 8960, 28, 12, 2, true, true),
            2,
            sdpa,
            2048,
            Task::CausalLm,
        ),
        "qwen2.5-7b" => desc(
            &n,
            llama(152064, 3584, 18944, 28, 28, 4, false, true),
            1,
            sdpa,
            2048,
            Task::CausalLm,
        ),
        // transformers' T5Attention calls SDPA with the position bias as the mask (the
        // self-attention's bias is learned, so SDPA runs its math path there)
        "t5-small" => desc(&n, t5(512, 2048, 6, 8), 16, sdpa, 512, Task::Seq2seqLm),
        "t5-base" => desc(&n, t5(768, 3072, 12, 12), 8, sdpa, 512, Task::Seq2seqLm),
        _ => return Err(unknown(name)),
    };
    let mut d = d;
    if let Arch::Resnet(r) = &d.arch {
        d.buffer_bytes = resnet_buffers(&r.layers, r.bottleneck);
    }
    Ok(d)
}

fn unknown(name: &str) -> Error {
    let mut close: Vec<(usize, &str)> =
        NAMES.iter().map(|p| (edit_distance(name, p), *p)).collect();
    close.sort();
    let near: Vec<&str> = close
        .iter()
        .filter(|(d, p)| *d <= 3 || p.starts_with(name) || name.starts_with(*p))
        .map(|(_, p)| *p)
        .take(4)
        .collect();
    if near.is_empty() {
        Error::input(format!(
            "unknown preset '{name}'; presets: {}",
            NAMES.join(", ")
        ))
    } else {
        Error::input(format!(
            "unknown preset '{name}'; did you mean {}? (presets: {})",
            near.join(", "),
            NAMES.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::KnobArgs;

    fn params(name: &str) -> (u64, u64) {
        let w = crate::model::build(name, lookup(name).unwrap(), &KnobArgs::default()).unwrap();
        (w.params, w.trainable_params)
    }

    /// Parameter counts of the real models (torchvision / timm / transformers / navdp_model.py).
    #[test]
    fn parameter_counts_match_the_real_models() {
        assert_eq!(params("navdp"), (82_190_596, 82_189_828));
        assert_eq!(params("navdp-upstream").0, 133_358_474);
        assert_eq!(params("resnet18").0, 11_689_512);
        assert_eq!(params("resnet50").0, 25_557_032);
        assert_eq!(params("resnet152").0, 60_192_808);
        assert_eq!(params("vit-b16").0, 86_567_656);
        assert_eq!(params("vit-l16").0, 304_326_632);
        assert_eq!(params("gpt2").0, 124_439_808);
        assert_eq!(params("gpt2-xl").0, 1_557_611_200);
        assert_eq!(params("bert-base").0, 109_514_298);
        assert_eq!(params("llama-2-7b").0, 6_738_415_616);
        assert_eq!(params("llama-3-8b").0, 8_030_261_248);
        assert_eq!(params("mistral-7b").0, 7_241_732_096);
        assert_eq!(params("qwen2.5-0.5b").0, 494_032_768);
        assert_eq!(params("qwen2.5-7b").0, 7_615_616_512);
        assert_eq!(params("t5-small").0, 60_506_624);
        assert_eq!(params("t5-base").0, 222_903_552);
    }

    #[test]
    fn unknown_preset_lists_close_names() {
        let e = lookup("resnet5").unwrap_err().to_string();
        assert!(e.contains("did you mean") && e.contains("resnet50"), "{e}");
    }

    #[test]
    fn every_preset_resolves() {
        for n in NAMES {
            assert!(lookup(n).is_ok(), "{n}");
        }
    }
}
