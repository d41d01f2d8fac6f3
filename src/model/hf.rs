//! Hugging Face `config.json` families: gpt2, bert/roberta, llama/mistral/qwen2, t5, vit.
use std::path::Path;

use serde_json::Value;

use super::arch::{Act, Arch, LmSpec, LmStyle, T5Spec, VitSpec};
use super::ModelDesc;
use crate::error::{Error, Result};
use crate::knobs::{Attention, KnobDefaults, Task};

pub const FAMILIES: &[&str] = &[
    "gpt2", "bert", "roberta", "llama", "mistral", "qwen2", "t5", "vit",
];

pub fn load(path: &Path) -> Result<ModelDesc> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::input(format!("{}: not JSON: {e}", path.display())))?;
    parse(&v).map_err(|e| Error::input(format!("{}: {e}", path.display())))
}

struct Cfg<'a>(&'a Value);

impl Cfg<'_> {
    fn u(&self, keys: &[&str]) -> std::result::Result<u64, String> {
        for k in keys {
            if let Some(x) = self.0.get(*k).and_then(|x| x.as_u64()) {
                return Ok(x);
            }
        }
        Err(format!("field '{}' missing or not a number", keys[0]))
    }
    fn uo(&self, keys: &[&str]) -> Option<u64> {
        self.u(keys).ok()
    }
    fn f(&self, key: &str, def: f64) -> f64 {
        self.0.get(key).and_then(|x| x.as_f64()).unwrap_or(def)
    }
    fn b(&self, key: &str, def: bool) -> bool {
        self.0.get(key).and_then(|x| x.as_bool()).unwrap_or(def)
    }
    fn s(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|x| x.as_str())
    }
}

fn act(name: Option<&str>, def: Act) -> std::result::Result<Act, String> {
    Ok(match name {
        None => def,
        Some("gelu") => Act::Gelu,
        Some("gelu_new") | Some("gelu_fast") => Act::GeluNewPython,
        Some("gelu_pytorch_tanh") => Act::GeluTanh,
        Some("relu") => Act::Relu,
        Some("silu") | Some("swish") => Act::SwiGlu,
        Some(o) => {
            return Err(format!(
                "activation '{o}' is not modelled (gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
            ))
        }
    })
}

pub fn parse(v: &Value) -> std::result::Result<ModelDesc, String> {
    let c = Cfg(v);
    let mt = c.s("model_type").unwrap_or("").to_ascii_lowercase();
    let desc = |name: &str, arch: Arch, attention: Attention, seq: u64, task: Task, batch: u64| {
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
    };
    match mt.as_str() {
        "gpt2" => {
            let d = c.u(&["n_embd"])?;
            let spec = LmSpec {
                style: LmStyle::Gpt2,
                vocab: c.u(&["vocab_size"])?,
                hidden: d,
                layers: c.u(&["n_layer"])?,
                heads: c.u(&["n_head"])?,
                kv_heads: None,
                head_dim: None,
                ffn: c.uo(&["n_inner"]).unwrap_or(4 * d),
                act: act(c.s("activation_function"), Act::GeluNewPython)?,
                positions: c.u(&["n_positions"])?,
                token_types: 0,
                tied_embeddings: c.b("tie_word_embeddings", true),
                dropout: c.f("resid_pdrop", 0.1),
                attention_dropout: c.f("attn_pdrop", 0.1),
                qkv_bias: true,
                bias: true,
            };
            let seq = spec.positions;
            Ok(desc("gpt2", Arch::Lm(spec), Attention::Sdpa, seq, Task::CausalLm, 8))
        }
        "bert" | "roberta" => {
            let d = c.u(&["hidden_size"])?;
            let spec = LmSpec {
                style: LmStyle::Bert,
                vocab: c.u(&["vocab_size"])?,
                hidden: d,
                layers: c.u(&["num_hidden_layers"])?,
                heads: c.u(&["num_attention_heads"])?,
                kv_heads: None,
                head_dim: None,
                ffn: c.u(&["intermediate_size"])?,
                act: act(c.s("hidden_act"), Act::Gelu)?,
                positions: c.u(&["max_position_embeddings"])?,
                token_types: c.uo(&["type_vocab_size"]).unwrap_or(2),
                tied_embeddings: c.b("tie_word_embeddings", true),
                dropout: c.f("hidden_dropout_prob", 0.1),
                attention_dropout: c.f("attention_probs_dropout_prob", 0.1),
                qkv_bias: true,
                bias: true,
            };
            // roberta: positions offset by padding_idx + 1, so max_position_embeddings - 2 tokens
            let seq = if mt == "roberta" { spec.positions.saturating_sub(2) } else { spec.positions }.max(1);
            Ok(desc(&mt, Arch::Lm(spec), Attention::Sdpa, seq.min(512), Task::MaskedLm, 16))
        }
        "llama" | "mistral" | "qwen2" => {
            let d = c.u(&["hidden_size"])?;
            let heads = c.u(&["num_attention_heads"])?;
            let kv = c.uo(&["num_key_value_heads"]).unwrap_or(heads);
            if kv == 0 || heads % kv != 0 {
                return Err(format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"));
            }
            let qkv_bias = if mt == "qwen2" { true } else { c.b("attention_bias", false) };
            let spec = LmSpec {
                style: LmStyle::Llama,
                vocab: c.u(&["vocab_size"])?,
                hidden: d,
                layers: c.u(&["num_hidden_layers"])?,
                heads,
                kv_heads: Some(kv),
                head_dim: c.uo(&["head_dim"]),
                ffn: c.u(&["intermediate_size"])?,
                act: Act::SwiGlu,
                positions: 0,
                token_types: 0,
                tied_embeddings: c.b("tie_word_embeddings", false),
                dropout: 0.0,
                attention_dropout: c.f("attention_dropout", 0.0),
                qkv_bias,
                bias: c.b("mlp_bias", false),
            };
            let seq = c.uo(&["max_position_embeddings"]).unwrap_or(2048).min(4096);
            Ok(desc(&mt, Arch::Lm(spec), Attention::Sdpa, seq, Task::CausalLm, 1))
        }
        "t5" | "mt5" => {
            let ff = c.s("feed_forward_proj").unwrap_or("relu");
            let a = match ff {
                "relu" => Act::Relu,
                "gated-gelu" => Act::GatedGeluNew,
                o => return Err(format!("feed_forward_proj '{o}' is not modelled (relu, gated-gelu)")),
            };
            let layers = c.u(&["num_layers"])?;
            let spec = T5Spec {
                vocab: c.u(&["vocab_size"])?,
                d_model: c.u(&["d_model"])?,
                d_kv: c.u(&["d_kv"])?,
                d_ff: c.u(&["d_ff"])?,
                layers,
                decoder_layers: c.uo(&["num_decoder_layers"]).unwrap_or(layers),
                heads: c.u(&["num_heads"])?,
                act: a,
                tied_embeddings: c.b("tie_word_embeddings", true),
                dropout: c.f("dropout_rate", 0.1),
                relative_buckets: c.uo(&["relative_attention_num_buckets"]).unwrap_or(32),
            };
            Ok(desc(&mt, Arch::T5(spec), Attention::Sdpa, 512, Task::Seq2seqLm, 8))
        }
        "vit" => {
            let d = c.u(&["hidden_size"])?;
            let heads = c.u(&["num_attention_heads"])?;
            let ffn = c.u(&["intermediate_size"])?;
            let image = c.uo(&["image_size"]).unwrap_or(224);
            let spec = VitSpec {
                path: String::new(),
                image,
                patch: c.u(&["patch_size"])?,
                in_chans: c.uo(&["num_channels"]).unwrap_or(3),
                dim: d,
                depth: c.u(&["num_hidden_layers"])?,
                heads,
                mlp_ratio: ffn as f64 / d as f64,
                frames: 1,
                layerscale: false,
                classes: 1000,
                pos_grid: 0,
                mask_token: false,
                frozen: false,
                attention: None,
            };
            let mut dd = desc("vit", Arch::Vit(spec), Attention::Sdpa, 0, Task::ImageClassification, 64);
            dd.image = image;
            if let Some(l) = v.get("id2label").and_then(|x| x.as_object()) {
                if l.len() > 2 {
                    dd.classes = l.len() as u64;
                }
            }
            Ok(dd)
        }
        "" => Err(format!(
            "no model_type; supported families: {}; other models: trace: (the traced tier) or a .toml workload",
            FAMILIES.join(", ")
        )),
        other => Err(format!(
            "model_type '{other}' is not a supported family ({}); for other models use trace: (the traced tier, `oomdoc probe`) or a .toml workload",
            FAMILIES.join(", ")
        )),
    }
}
