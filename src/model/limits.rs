//! The sizes a model description may have. A config.json or workload file with a zero width
//! would divide by zero while tracing, and one with a billion layers would trace for hours or
//! overflow the byte counts: both are refused here, with the field named, before tracing.
//!
//! The bounds are far above any model trained today (widths of tens of thousands, a few
//! hundred layers, vocabularies of a few hundred thousand) and low enough that the builders'
//! products of two or three of them stay well inside 64 bits.
use super::arch::{Arch, LmStyle};

/// Widths: hidden, feed-forward, head and channel sizes.
pub const MAX_WIDTH: u64 = 1 << 20;
/// Layers of one stack (or blocks of one ResNet stage).
pub const MAX_LAYERS: u64 = 1 << 12;
/// Vocabulary, position-table rows, classes, sequence lengths.
pub const MAX_COUNT: u64 = 1 << 24;
/// Image side in pixels, patch side, attention heads.
pub const MAX_SIDE: u64 = 1 << 16;

/// `v` must lie in `lo..=hi`.
pub(crate) fn range(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!("{field} must be between {lo} and {hi} (is {v})"));
    }
    Ok(())
}

/// Each `(field, value, lo, hi)`: `range`.
fn ranges(checks: &[(&str, u64, u64, u64)]) -> Result<(), String> {
    checks
        .iter()
        .try_for_each(|&(field, v, lo, hi)| range(field, v, lo, hi))
}

/// `num` must be a multiple of `den` (both already at least 1).
fn multiple(num_field: &str, num: u64, den_field: &str, den: u64) -> Result<(), String> {
    if num % den != 0 {
        return Err(format!(
            "{num_field} {num} is not a multiple of {den_field} {den}"
        ));
    }
    Ok(())
}

fn fraction(field: &str, v: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{field} must be between 0 and 1 (is {v})"));
    }
    Ok(())
}

/// Checks every size of `arch` (field names as in the workload format, `docs/workload-format.md`).
pub fn check(arch: &Arch) -> Result<(), String> {
    match arch {
        Arch::Lm(s) => {
            ranges(&[
                ("vocab", s.vocab, 1, MAX_COUNT),
                ("hidden", s.hidden, 1, MAX_WIDTH),
                ("layers", s.layers, 1, MAX_LAYERS),
                ("heads", s.heads, 1, MAX_SIDE),
                ("ffn", s.ffn, 1, MAX_WIDTH),
                ("positions", s.positions, 0, MAX_COUNT),
                ("token_types", s.token_types, 0, MAX_SIDE),
            ])?;
            if let Some(kv) = s.kv_heads {
                range("kv_heads", kv, 1, MAX_SIDE)?;
                multiple("heads", s.heads, "kv_heads", kv)?;
            }
            match s.head_dim {
                Some(hd) => range("head_dim", hd, 1, MAX_WIDTH)?,
                // transformers' Llama-family attention takes hidden // heads when no head_dim
                // is given; GPT-2 and BERT refuse a width their heads do not divide
                None if s.style == LmStyle::Llama => {
                    range("hidden / heads", s.hidden / s.heads, 1, MAX_WIDTH)?
                }
                None => multiple("hidden", s.hidden, "heads", s.heads)?,
            }
            if s.style == LmStyle::Gpt2 && s.positions == 0 {
                return Err("positions must be at least 1 for a gpt2-style model".into());
            }
            fraction("dropout", s.dropout)?;
            fraction("attention_dropout", s.attention_dropout)?;
        }
        Arch::T5(s) => {
            ranges(&[
                ("vocab", s.vocab, 1, MAX_COUNT),
                ("d_model", s.d_model, 1, MAX_WIDTH),
                ("d_kv", s.d_kv, 1, MAX_WIDTH),
                ("d_ff", s.d_ff, 1, MAX_WIDTH),
                ("layers", s.layers, 1, MAX_LAYERS),
                ("decoder_layers", s.decoder_layers, 1, MAX_LAYERS),
                ("heads", s.heads, 1, MAX_SIDE),
                ("relative_buckets", s.relative_buckets, 1, MAX_SIDE),
            ])?;
            fraction("dropout", s.dropout)?;
        }
        Arch::Vit(v) => {
            ranges(&[
                ("image", v.image, 1, MAX_SIDE),
                ("patch", v.patch, 1, MAX_SIDE),
                ("in_chans", v.in_chans, 1, MAX_LAYERS),
                ("dim", v.dim, 1, MAX_WIDTH),
                ("depth", v.depth, 1, MAX_LAYERS),
                ("heads", v.heads, 1, MAX_SIDE),
            ])?;
            multiple("dim", v.dim, "heads", v.heads)?;
            ranges(&[
                ("frames", v.frames, 1, MAX_LAYERS),
                ("classes", v.classes, 0, MAX_COUNT),
                ("pos_grid", v.pos_grid, 0, MAX_SIDE),
            ])?;
            if !(v.mlp_ratio > 0.0 && v.mlp_ratio * v.dim as f64 <= MAX_WIDTH as f64) {
                return Err(format!(
                    "mlp_ratio must be above 0 and mlp_ratio x dim at most {MAX_WIDTH} (is {})",
                    v.mlp_ratio
                ));
            }
        }
        Arch::Resnet(r) => {
            range("layers (number of stages)", r.layers.len() as u64, 1, 8)?;
            for &n in &r.layers {
                range("layers (blocks of a stage)", n, 1, MAX_LAYERS)?;
            }
            ranges(&[
                ("image", r.image, 1, MAX_SIDE),
                ("classes", r.classes, 1, MAX_COUNT),
                ("width_per_group", r.width_per_group, 1, MAX_LAYERS),
            ])?;
        }
        Arch::Navdp(n) => {
            if n.variant != "user" && n.variant != "official" {
                return Err(format!(
                    "variant must be \"user\" or \"official\" (is \"{}\")",
                    n.variant
                ));
            }
            ranges(&[
                ("image", n.image, 14, MAX_SIDE),
                ("memory_size", n.memory_size, 1, MAX_LAYERS),
                ("depth_frames", n.depth_frames, 1, MAX_LAYERS),
                ("tokens", n.tokens, 1, MAX_WIDTH),
                ("predict_size", n.predict_size, 1, MAX_WIDTH),
                ("temporal_depth", n.temporal_depth, 1, MAX_LAYERS),
                ("heads", n.heads, 1, MAX_SIDE),
                ("dim", n.dim, 1, MAX_WIDTH),
            ])?;
            multiple("dim", n.dim, "heads", n.heads)?;
            ranges(&[
                ("vit_depth", n.vit_depth, 1, MAX_LAYERS),
                ("vit_heads", n.vit_heads, 1, MAX_SIDE),
            ])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_within_the_limits() {
        for name in crate::model::presets::NAMES {
            let d = crate::model::presets::lookup(name).unwrap();
            check(&d.arch).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn zero_and_oversized_fields_are_named() {
        let mut d = crate::model::presets::lookup("gpt2").unwrap();
        if let Arch::Lm(s) = &mut d.arch {
            s.heads = 0;
        }
        assert_eq!(
            check(&d.arch).unwrap_err(),
            "heads must be between 1 and 65536 (is 0)"
        );
        if let Arch::Lm(s) = &mut d.arch {
            s.heads = 12;
            s.layers = 1_000_000_000;
        }
        assert!(check(&d.arch).unwrap_err().starts_with("layers must be"));
        if let Arch::Lm(s) = &mut d.arch {
            s.layers = 12;
            s.heads = 7;
        }
        assert_eq!(
            check(&d.arch).unwrap_err(),
            "hidden 768 is not a multiple of heads 7"
        );
        // the Llama family takes hidden // heads, as transformers does
        let mut l = crate::model::presets::lookup("qwen2.5-0.5b").unwrap();
        if let Arch::Lm(s) = &mut l.arch {
            s.heads = 14 * 5;
            s.kv_heads = Some(14 * 5);
            s.hidden = 900;
        }
        assert_eq!(check(&l.arch), Ok(()));
    }
}
