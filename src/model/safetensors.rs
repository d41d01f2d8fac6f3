//! Parameter counts and dtypes from a `.safetensors` header (the weights are not read).
//!
//! Format (huggingface/safetensors): 8 bytes little-endian header length N, then N bytes of
//! JSON `{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`.
use std::io::Read;
use std::path::Path;

use super::ModelDesc;
use crate::error::{Error, Result};

/// Headers larger than this are not a safetensors file (the format caps them at 100 MB).
const MAX_HEADER: u64 = 100_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub params: u64,
    pub bytes: u64,
    /// dtype of most elements (`F32`, `BF16`, `F16`...).
    pub dtype: String,
    pub tensors: usize,
}

pub fn read_header(path: &Path) -> Result<Header> {
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| {
        Error::input(format!(
            "{}: too short for a safetensors file",
            path.display()
        ))
    })?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > MAX_HEADER {
        return Err(Error::input(format!(
            "{}: not a safetensors file (header length {n})",
            path.display()
        )));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)
        .map_err(|_| Error::input(format!("{}: header truncated", path.display())))?;
    parse_header(&buf).map_err(|e| Error::input(format!("{}: {e}", path.display())))
}

pub fn parse_header(buf: &[u8]) -> std::result::Result<Header, String> {
    let v: serde_json::Value =
        serde_json::from_slice(buf).map_err(|e| format!("header is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("header is not a JSON object")?;
    let mut params = 0u64;
    let mut bytes = 0u64;
    let mut by_dtype: std::collections::BTreeMap<String, u64> = Default::default();
    let mut tensors = 0;
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or(format!("tensor '{name}': no dtype"))?;
        let shape = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or(format!("tensor '{name}': no shape"))?;
        let too_large =
            || format!("tensor '{name}': shape {shape:?} has more elements than a GPU can hold");
        let mut e = 1u64;
        for d in shape {
            let d = d.as_u64().ok_or(format!("tensor '{name}': bad shape"))?;
            e = e.checked_mul(d).ok_or_else(too_large)?;
        }
        // causal-mask buffers stored by old GPT-2 checkpoints are not parameters
        if name.ends_with(".attn.bias") && shape.len() == 4 || name.ends_with("masked_bias") {
            continue;
        }
        let size = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        // no real checkpoint comes near 2^62 bytes; beyond it the sums would wrap
        params = params
            .checked_add(e)
            .filter(|p| *p < 1 << 62)
            .ok_or_else(too_large)?;
        bytes = e
            .checked_mul(size)
            .and_then(|b| bytes.checked_add(b))
            .filter(|b| *b < 1 << 62)
            .ok_or_else(too_large)?;
        *by_dtype.entry(dtype.to_string()).or_default() += e;
        tensors += 1;
    }
    let dtype = by_dtype
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(d, _)| d.clone())
        .unwrap_or_default();
    Ok(Header {
        params,
        bytes,
        dtype,
        tensors,
    })
}

/// `safetensors:PATH`: the architecture comes from the `config.json` beside the file; the header
/// gives the parameter count, checked against that architecture.
pub fn load(path: &Path) -> Result<ModelDesc> {
    let h = read_header(path)?;
    let cfg = path.with_file_name("config.json");
    if !cfg.exists() {
        return Err(Error::input(format!(
            "{}: {} parameters ({}), but activations need the architecture: put its config.json beside it, or use a .toml workload or trace:",
            path.display(),
            h.params,
            h.dtype
        )));
    }
    let mut d = super::hf::load(&cfg)?;
    d.declared_params = Some(h.params);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_params() {
        let h = parse_header(br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}"#).unwrap();
        assert_eq!(h.params, 10);
        assert_eq!(h.bytes, 32);
        assert_eq!(h.dtype, "F32");
        assert!(parse_header(b"[1]").is_err());
    }

    /// Shapes whose element or byte counts overflow 64 bits are an error, not a wrapped count
    /// (they panicked in debug builds).
    #[test]
    fn oversized_shapes_are_refused() {
        let huge = br#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#;
        assert!(parse_header(huge).unwrap_err().contains("tensor 'a'"));
        let bytes = br#"{"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}}"#;
        assert!(parse_header(bytes).is_err());
        let two = br#"{"a":{"dtype":"I8","shape":[4611686018427387000]},"b":{"dtype":"I8","shape":[4611686018427387000]}}"#;
        assert!(parse_header(two).is_err());
    }
}
