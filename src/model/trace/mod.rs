//! The traced tier: a trace written by the Python probe (`python/oomdoc_probe`, format in
//! docs/trace-format.md) is loaded here and replayed through the caching-allocator simulation
//! (`estimate`).
pub mod accuracy;
mod estimate;
mod to_estimate;

pub use to_estimate::estimate_file;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

pub use estimate::{
    estimate, estimate_with, replayed_events, Component, EstimateOptions, OomPoint, ReplayedEvent,
    TraceEstimate, CUBLAS_WORKSPACE_BYTES, OUTSIDE_PYTORCH_BYTES,
};

/// The `format` field of a trace.
pub const FORMAT: &str = "oomdoc-trace";
/// The newest trace format version this build reads.
pub const FORMAT_VERSION: u64 = 1;

/// Phase of the training step an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
    Other,
}

impl Phase {
    fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "f" => Phase::Forward,
            "b" => Phase::Backward,
            "o" => Phase::Optimizer,
            "x" => Phase::Other,
            _ => return None,
        })
    }
}

/// One entry of a run's event stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new storage of `bytes` bytes (untyped storage nbytes).
    Alloc {
        id: u64,
        bytes: u64,
        dtype: u32,
        shape: Vec<u64>,
        op: u32,
        module: u32,
        phase: Phase,
        /// Index into the run's regions, if allocated inside one.
        region: Option<u32>,
    },
    /// The storage `id` was freed.
    Free {
        id: u64,
        phase: Phase,
        region: Option<u32>,
    },
    /// A call whose CUDA kernel takes memory the CPU run does not show (convolution workspace,
    /// the first matrix product's cuBLAS workspace); `info` holds its recorded arguments.
    Call { op: u32, info: Value, phase: Phase },
}

/// A storage alive when the run started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Persistent {
    pub id: u64,
    pub bytes: u64,
    pub dtype: u32,
    pub shape: Vec<u64>,
    /// param, buffer, grad, opt_state
    pub kind: String,
    pub name: u32,
}

/// A `scaled_dot_product_attention` call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub id: u32,
    pub kind: String,
    pub q: Vec<u64>,
    /// Strides of `q` (probe 0.1.3; absent in earlier traces).
    #[serde(default)]
    pub q_stride: Vec<u64>,
    pub k: Vec<u64>,
    pub v: Vec<u64>,
    pub dtype: String,
    #[serde(default)]
    pub dropout_p: f64,
    #[serde(default)]
    pub is_causal: bool,
    #[serde(default)]
    pub has_mask: bool,
    /// The mask requires grad (a learned position bias): CUDA's fused kernels refuse it and
    /// the call runs the math path. Absent in traces from earlier probes.
    #[serde(default)]
    pub mask_requires_grad: bool,
    #[serde(default)]
    pub requires_grad: bool,
    #[serde(default)]
    pub outputs: Vec<u64>,
    /// Storages of q, k, v and the mask (format 1 traces from probe 0.1.0 may lack them).
    #[serde(default)]
    pub inputs: Vec<u64>,
    /// `f`, or `b` for a call recomputed under activation checkpointing during backward.
    #[serde(default)]
    pub phase: String,
}

impl Region {
    /// Whether CUDA runs this call through a fused kernel (flash, memory-efficient, cuDNN). An
    /// attention mask that requires grad (a learned position bias, as in T5) is refused by them
    /// (`check_attn_mask_shape`, sdp_utils_cpp.h): SDPA then runs its math path, as on the CPU.
    pub fn fused_on_cuda(&self) -> bool {
        !self.mask_requires_grad
    }

    /// The order, outermost first, in which a fused kernel lays out its output's dimensions
    /// (query shape [B, H, L, D]). The memory-efficient kernel (the one that takes float32)
    /// writes a fresh [B, L, H, D] tensor (`_efficient_attention_forward`); flash and cuDNN
    /// attention write `empty_like(q)`, laid out like the query (a view of a [B, L, 3, H, D]
    /// projection: [B, L, H, D]; of nn.MultiheadAttention's sequence-first one: [L, B, H, D]).
    /// Traces without `q_stride` take [B, L, H, D].
    pub fn output_layout(&self) -> Option<[usize; 4]> {
        if self.q.len() != 4 {
            return None;
        }
        if self.dtype == "float32" || self.q_stride.len() != 4 {
            return Some([0, 2, 1, 3]);
        }
        let mut order = [0usize, 1, 2, 3];
        // stable: dimensions of equal stride (size-1 ones) keep their logical order
        order.sort_by_key(|&d| std::cmp::Reverse(self.q_stride[d]));
        Some(order)
    }

    /// Bytes of the log-sum-exp a fused kernel keeps for backward: float32, one per query row and
    /// head. In float32 only the memory-efficient kernel runs (flash and cuDNN take 16-bit inputs),
    /// and it pads the rows to a multiple of 32 (`kAlignLSE`, PyTorch's mem_eff_attention
    /// kernel_forward.h): 16 KiB, not 12, for 24 query rows, 8 heads, batch 16 in the H100
    /// history of NavDP-like fp32.
    pub fn lse_bytes(&self) -> u64 {
        let d = self.q.last().copied().unwrap_or(1).max(1);
        let rows: u64 = self.q.iter().product::<u64>() / d;
        let l = self.q.len().checked_sub(2).map_or(1, |i| self.q[i]).max(1);
        let padded = if self.dtype == "float32" {
            l.div_ceil(32) * 32
        } else {
            l
        };
        rows / l * padded * 4
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Untraced {
    pub op: String,
    pub reason: String,
    pub count: u64,
}

/// One call of the step function.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// "first" (the first optimizer step, state created lazily) or "steady".
    pub name: String,
    pub batch: u64,
    pub persistent: Vec<Persistent>,
    pub events: Vec<Event>,
    pub saved: Vec<u64>,
    pub categories: HashMap<u64, String>,
    pub alive_after: Vec<u64>,
    pub regions: Vec<Region>,
    pub untraced: Vec<Untraced>,
}

/// A loaded trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub version: u64,
    pub producer: String,
    pub torch: String,
    /// Low-precision dtypes of the (emulated CUDA) autocast regions seen; empty = no autocast.
    pub autocast: Vec<String>,
    pub optimizers: Vec<String>,
    pub strings: Vec<String>,
    pub runs: Vec<Run>,
}

impl Trace {
    pub fn string(&self, i: u32) -> &str {
        self.strings.get(i as usize).map_or("", |s| s.as_str())
    }

    /// The runs at steady state ("steady"), by batch size.
    pub fn steady_runs(&self) -> Vec<&Run> {
        let mut v: Vec<&Run> = self.runs.iter().filter(|r| r.name == "steady").collect();
        v.sort_by_key(|r| r.batch);
        v
    }

    pub fn first_run(&self) -> Option<&Run> {
        self.runs.iter().find(|r| r.name == "first")
    }

    /// Number of events over all runs.
    pub fn event_count(&self) -> usize {
        self.runs.iter().map(|r| r.events.len()).sum()
    }
}

/// Loads a trace file (`.json`, or `.json.gz` gzip-compressed).
pub fn load(path: &Path) -> Result<Trace> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .map_err(|e| {
                Error::input(format!(
                    "{}: cannot decompress the gzip trace: {e}",
                    path.display()
                ))
            })?;
        s
    } else {
        String::from_utf8(raw).map_err(|_| {
            Error::input(format!(
                "{}: not a trace (not UTF-8 JSON text)",
                path.display()
            ))
        })?
    };
    parse(&text).map_err(|e| Error::input(format!("{}: {e}", path.display())))
}

/// Parses the text of a trace. Errors name the field that is wrong.
pub fn parse(text: &str) -> std::result::Result<Trace, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        if e.is_eof() {
            format!(
                "the trace is truncated (JSON ends early at line {} column {})",
                e.line(),
                e.column()
            )
        } else {
            format!(
                "the trace is not valid JSON (line {} column {}: {e})",
                e.line(),
                e.column()
            )
        }
    })?;
    let format = v.get("format").and_then(Value::as_str).unwrap_or("");
    if format != FORMAT {
        return Err(format!(
            "not an oomdoc trace (field 'format' is {:?}, expected \"{FORMAT}\")",
            format
        ));
    }
    let version = v
        .get("version")
        .and_then(Value::as_u64)
        .ok_or("field 'version' is missing or not a whole number")?;
    if version > FORMAT_VERSION {
        return Err(format!(
            "trace format version {version} is newer than this oomdoc reads (up to {FORMAT_VERSION}); update oomdoc"
        ));
    }
    if version == 0 {
        return Err("field 'version' must be at least 1".into());
    }
    let strings: Vec<String> = match v.get("strings") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("strings[{i}] is not a string"))
            })
            .collect::<std::result::Result<_, _>>()?,
        _ => return Err("field 'strings' is missing or not a list".into()),
    };
    let nstr = strings.len() as u64;
    let runs_v = v
        .get("runs")
        .and_then(Value::as_array)
        .ok_or("field 'runs' is missing or not a list")?;
    if runs_v.is_empty() {
        return Err("field 'runs' is empty: the probe recorded no step".into());
    }
    let mut runs = Vec::with_capacity(runs_v.len());
    for (ri, r) in runs_v.iter().enumerate() {
        runs.push(parse_run(r, ri, nstr)?);
    }
    let str_list = |key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Trace {
        version,
        producer: v
            .get("producer")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        torch: v
            .get("torch")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        autocast: str_list("autocast"),
        optimizers: str_list("optimizers"),
        strings,
        runs,
    })
}

fn parse_run(r: &Value, ri: usize, nstr: u64) -> std::result::Result<Run, String> {
    let at = |field: &str| format!("runs[{ri}].{field}");
    let name = r
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{} is missing or not a string", at("name")))?
        .to_string();
    let batch = r
        .get("batch")
        .and_then(Value::as_u64)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{} is missing or not a positive whole number", at("batch")))?;
    let u = |x: &Value, what: &str| -> std::result::Result<u64, String> {
        x.as_u64()
            .ok_or_else(|| format!("{what} is not a non-negative whole number"))
    };
    let s = |x: &Value, what: &str| -> std::result::Result<u32, String> {
        let i = u(x, what)?;
        if i >= nstr {
            return Err(format!("{what} = {i} is not an index into 'strings'"));
        }
        Ok(i as u32)
    };
    let shape = |x: &Value, what: &str| -> std::result::Result<Vec<u64>, String> {
        x.as_array()
            .ok_or_else(|| format!("{what} is not a list"))?
            .iter()
            .map(|d| u(d, what))
            .collect()
    };
    let mut persistent = Vec::new();
    for (i, p) in r
        .get("persistent")
        .and_then(Value::as_array)
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let w = format!("{}[{i}]", at("persistent"));
        let a = p
            .as_array()
            .filter(|a| a.len() >= 6)
            .ok_or_else(|| format!("{w} is not a list [id, bytes, dtype, shape, kind, name]"))?;
        persistent.push(Persistent {
            id: u(&a[0], &w)?,
            bytes: u(&a[1], &w)?,
            dtype: s(&a[2], &w)?,
            shape: shape(&a[3], &w)?,
            kind: a[4].as_str().unwrap_or("").to_string(),
            name: s(&a[5], &w)?,
        });
    }
    let evs = r
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{} is missing or not a list", at("events")))?;
    let mut events = Vec::with_capacity(evs.len());
    let nregions = r
        .get("regions")
        .and_then(Value::as_array)
        .map_or(0, |a| a.len());
    let region = |x: &Value, w: &str| -> std::result::Result<Option<u32>, String> {
        match x.as_i64() {
            Some(i) if i < 0 => Ok(None),
            Some(i) if (i as usize) < nregions => Ok(Some(i as u32)),
            _ => Err(format!("{w}: region is not -1 or an index into 'regions'")),
        }
    };
    let phase = |x: &Value, w: &str| -> std::result::Result<Phase, String> {
        x.as_str()
            .and_then(Phase::parse)
            .ok_or_else(|| format!("{w}: phase is not one of f, b, o, x"))
    };
    for (i, e) in evs.iter().enumerate() {
        let w = format!("{}[{i}]", at("events"));
        let a = e.as_array().ok_or_else(|| format!("{w} is not a list"))?;
        let kind = a.first().and_then(Value::as_str).unwrap_or("");
        let ev = match kind {
            "a" if a.len() >= 9 => Event::Alloc {
                id: u(&a[1], &w)?,
                bytes: u(&a[2], &w)?,
                dtype: s(&a[3], &w)?,
                shape: shape(&a[4], &w)?,
                op: s(&a[5], &w)?,
                module: s(&a[6], &w)?,
                phase: phase(&a[7], &w)?,
                region: region(&a[8], &w)?,
            },
            "f" if a.len() >= 4 => Event::Free {
                id: u(&a[1], &w)?,
                phase: phase(&a[2], &w)?,
                region: region(&a[3], &w)?,
            },
            "c" if a.len() >= 4 => Event::Call {
                op: s(&a[1], &w)?,
                info: a[2].clone(),
                phase: phase(&a[3], &w)?,
            },
            _ => {
                return Err(format!(
                    "{w} is not an event (expected [\"a\", ...9 fields], [\"f\", id, phase, region] or [\"c\", op, args, phase])"
                ))
            }
        };
        events.push(ev);
    }
    let ids = |key: &str| -> std::result::Result<Vec<u64>, String> {
        r.get(key)
            .and_then(Value::as_array)
            .map(|a| a.as_slice())
            .unwrap_or(&[])
            .iter()
            .map(|x| u(x, &at(key)))
            .collect()
    };
    let mut categories = HashMap::new();
    if let Some(m) = r.get("categories").and_then(Value::as_object) {
        for (k, v) in m {
            let id: u64 = k
                .parse()
                .map_err(|_| format!("{}: key '{k}' is not an id", at("categories")))?;
            categories.insert(id, v.as_str().unwrap_or("").to_string());
        }
    }
    let regions: Vec<Region> = match r.get("regions") {
        Some(x) => {
            serde_json::from_value(x.clone()).map_err(|e| format!("{}: {e}", at("regions")))?
        }
        None => Vec::new(),
    };
    let untraced: Vec<Untraced> = match r.get("untraced") {
        Some(x) => {
            serde_json::from_value(x.clone()).map_err(|e| format!("{}: {e}", at("untraced")))?
        }
        None => Vec::new(),
    };
    Ok(Run {
        name,
        batch,
        persistent,
        events,
        saved: ids("saved")?,
        categories,
        alive_after: ids("alive_after")?,
        regions,
        untraced,
    })
}

#[cfg(test)]
mod tests {
    use super::Region;

    fn region(q: &[u64], dtype: &str) -> Region {
        serde_json::from_value(serde_json::json!({
            "id": 0, "kind": "sdpa", "q": q, "k": q, "v": q, "dtype": dtype
        }))
        .unwrap()
    }

    #[test]
    fn fused_output_layout_follows_the_kernel() {
        let with_stride = |q: &[u64], stride: &[u64], dtype: &str| {
            let mut r = region(q, dtype);
            r.q_stride = stride.to_vec();
            r.output_layout()
        };
        // memory-efficient (float32): a fresh [B, L, H, D] whatever the query's layout
        let mha = ([16, 8, 24, 48], [384, 48, 6144, 1]);
        assert_eq!(with_stride(&mha.0, &mha.1, "float32"), Some([0, 2, 1, 3]));
        // flash / cuDNN: like the query; nn.MultiheadAttention's is sequence-first
        assert_eq!(with_stride(&mha.0, &mha.1, "bfloat16"), Some([2, 0, 1, 3]));
        // a head view of a [B, L, 3, H, D] projection (GPT-2, ViT)
        let packed = [2 * 1024 * 2304, 64, 2304, 1];
        assert_eq!(
            with_stride(&[2, 12, 1024, 64], &packed, "bfloat16"),
            Some([0, 2, 1, 3])
        );
        // traces without strides, and 3-d queries
        assert_eq!(
            region(&[2, 12, 1024, 64], "bfloat16").output_layout(),
            Some([0, 2, 1, 3])
        );
        assert_eq!(region(&[24, 197, 64], "bfloat16").output_layout(), None);
    }

    #[test]
    fn log_sum_exp_rows_are_padded_to_32_in_float32_only() {
        // NavDP-like decoder attention at batch 16: 8 heads, 24 query rows (H100 history)
        assert_eq!(region(&[16, 8, 24, 48], "float32").lse_bytes(), 16384);
        assert_eq!(region(&[16, 8, 24, 48], "bfloat16").lse_bytes(), 12288);
        // rows already a multiple of 32, and a 3-d query
        assert_eq!(
            region(&[2, 12, 1024, 64], "float32").lse_bytes(),
            2 * 12 * 1024 * 4
        );
        assert_eq!(region(&[24, 197, 64], "float32").lse_bytes(), 24 * 224 * 4);
    }
}
