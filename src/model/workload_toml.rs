//! The TOML workload format (docs/workload-format.md): a name, default knobs, and a `[model]`
//! table that is one of the architecture families of `arch.rs`.
use std::path::Path;

use serde::Deserialize;

use super::arch::Arch;
use super::ModelDesc;
use crate::error::{Error, Result};
use crate::knobs::{Attention, KnobDefaults, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    defaults: Defaults,
    model: Arch,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    batch: Option<u64>,
    attention: Option<Attention>,
    seq_len: Option<u64>,
    target_len: Option<u64>,
    image_size: Option<u64>,
    num_classes: Option<u64>,
    /// Bytes of registered buffers.
    buffer_bytes: Option<u64>,
}

/// The navdp preset, written in this format (the format's example).
pub const NAVDP_TOML: &str = include_str!("../../presets/navdp.toml");

pub fn load(path: &Path) -> Result<ModelDesc> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    parse(&text).map_err(|e| Error::input(format!("{}: {e}", path.display())))
}

/// Parses a workload file's text.
pub fn parse(text: &str) -> std::result::Result<ModelDesc, String> {
    let f: File = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(l) => format!("line {l}: {}", e.message()),
            None => e.message().to_string(),
        }
    })?;
    let d = f.defaults;
    let (task, def_attn, seq, image, classes) = match &f.model {
        Arch::Lm(s) => (
            if s.style == super::arch::LmStyle::Bert {
                Task::MaskedLm
            } else {
                Task::CausalLm
            },
            Attention::Sdpa,
            1024,
            224,
            1000,
        ),
        Arch::T5(_) => (Task::Seq2seqLm, Attention::Eager, 512, 224, 1000),
        Arch::Vit(v) => (
            Task::ImageClassification,
            Attention::Sdpa,
            0,
            v.image,
            v.classes.max(1),
        ),
        Arch::Resnet(r) => (
            Task::ImageClassification,
            Attention::Sdpa,
            0,
            r.image,
            r.classes,
        ),
        Arch::Navdp(n) => (Task::ImageClassification, Attention::Eager, 0, n.image, 1),
    };
    check(&f.model)?;
    Ok(ModelDesc {
        name: f.name,
        arch: f.model,
        defaults: KnobDefaults {
            batch: d.batch.unwrap_or(1).max(1),
            attention: d.attention.unwrap_or(def_attn),
        },
        seq_len: d.seq_len.unwrap_or(seq).max(1),
        target_len: d.target_len.unwrap_or(128).max(1),
        image: d.image_size.unwrap_or(image).max(1),
        classes: d.num_classes.unwrap_or(classes).max(1),
        task,
        buffer_bytes: d.buffer_bytes.unwrap_or(0),
        declared_params: None,
    })
}

/// Rejects sizes that make no model.
fn check(a: &Arch) -> std::result::Result<(), String> {
    let bad = |what: &str| Err(format!("[model] {what} must be at least 1"));
    match a {
        Arch::Lm(s) => {
            if s.hidden == 0 || s.layers == 0 || s.heads == 0 || s.vocab == 0 || s.ffn == 0 {
                return bad("hidden, layers, heads, vocab and ffn");
            }
            if s.head_dim.is_none() && s.hidden % s.heads != 0 {
                return Err(format!(
                    "[model] hidden {} is not a multiple of heads {}",
                    s.hidden, s.heads
                ));
            }
            if let Some(kv) = s.kv_heads {
                if kv == 0 || s.heads % kv != 0 {
                    return Err(format!(
                        "[model] heads {} is not a multiple of kv_heads {kv}",
                        s.heads
                    ));
                }
            }
        }
        Arch::T5(s) => {
            if s.d_model == 0 || s.layers == 0 || s.heads == 0 || s.vocab == 0 || s.d_kv == 0 {
                return bad("d_model, d_kv, layers, heads and vocab");
            }
        }
        Arch::Vit(v) => {
            if v.dim == 0 || v.depth == 0 || v.heads == 0 || v.patch == 0 || v.image == 0 {
                return bad("dim, depth, heads, patch and image");
            }
            if v.dim % v.heads != 0 {
                return Err(format!(
                    "[model] dim {} is not a multiple of heads {}",
                    v.dim, v.heads
                ));
            }
        }
        Arch::Resnet(r) => {
            if r.layers.is_empty() || r.layers.contains(&0) || r.image < 32 {
                return Err(
                    "[model] layers must be non-empty blocks per stage and image at least 32"
                        .into(),
                );
            }
        }
        Arch::Navdp(n) => {
            if n.dim == 0
                || n.heads == 0
                || n.vit_heads == 0
                || n.image < 14
                || n.temporal_depth == 0
            {
                return bad("dim, heads, vit_heads, temporal_depth and image");
            }
            if n.variant != "user" && n.variant != "official" {
                return Err(format!(
                    "[model] variant '{}': expected user or official",
                    n.variant
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navdp_example_parses() {
        let d = parse(NAVDP_TOML).unwrap();
        assert_eq!(d.name, "navdp");
        assert_eq!(d.defaults.batch, 16);
        assert_eq!(d.defaults.attention, Attention::Eager);
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse("name = \"x\"\n[model]\nfamily = \"vit\"\nwidth = 3\n").unwrap_err();
        assert!(e.contains("width") || e.contains("missing"), "{e}");
    }
}
