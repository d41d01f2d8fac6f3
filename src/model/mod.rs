//! Knowing the model: presets, Hugging Face configs, safetensors headers, TOML workloads, traces.
//!
//! Everything becomes a [`Workload`]: an architecture ([`arch::Arch`]) with the shapes the knobs
//! give it (sequence length, image size...), traced op by op ([`graph`]) once per precision mode
//! and attention kind. `memory::estimate` turns a workload and a set of knobs into bytes.
pub mod arch;
pub mod graph;
pub mod hf;
pub mod limits;
pub mod presets;
pub mod safetensors;
pub mod trace;
pub mod workload_toml;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::knobs::{Attention, KnobArgs, KnobDefaults, Knobs, Task};
use arch::{Arch, Shape};
use graph::{Mode, Trace};

/// One model with its input shapes, ready to estimate.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// Short name (`navdp`, `gpt2`, the config's model_type...).
    pub name: String,
    /// What `--model` said.
    pub source: String,
    pub arch: Arch,
    pub shape: Shape,
    pub params: u64,
    pub trainable_params: u64,
    /// Bytes of registered buffers (BatchNorm running stats, masks) as the model stores them.
    pub buffer_bytes: u64,
    /// Defaults for knobs the user did not give (batch, attention).
    #[serde(skip)]
    pub defaults: KnobDefaults,
    /// Traces per (precision mode, attention), built on first use.
    #[serde(skip)]
    pub(crate) traces: Arc<[OnceLock<Trace>; 6]>,
    #[serde(skip)]
    pub(crate) cache: Arc<Mutex<crate::memory::ProfileCache>>,
}

/// What the throughput model needs (see `plan`): per-sample work of one forward pass.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ComputeProfile {
    /// Forward FLOPs per sample (matmuls, convolutions, attention; 2 per multiply-add).
    pub forward_flops_per_sample: f64,
    /// Forward FLOPs per sample recomputed in backward by the configured checkpointing.
    pub recompute_flops_per_sample: f64,
    /// Bytes per sample the eager attention score matrices move in forward and backward
    /// (0 with SDPA): each [heads, s, s] matrix is written by QK^T, read and written by softmax,
    /// read by @V, and the backward reads/writes it about as often again (~8 passes in all).
    pub attention_matrix_bytes_per_sample: f64,
    /// Eager attention score elements per sample (whatever the attention knob).
    pub attention_matrix_elems_per_sample: f64,
    pub params: u64,
    pub trainable_params: u64,
    /// Per repeated-block group.
    pub groups: Vec<GroupProfile>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GroupProfile {
    /// Module path of the group (what `--checkpoint-modules` takes).
    pub path: String,
    pub blocks: u64,
    pub forward_flops_per_sample: f64,
    /// Bytes per sample the group's blocks keep for backward without checkpointing.
    pub saved_bytes_per_sample: f64,
    pub checkpointed: bool,
}

/// Index of the trace of (precision mode, attention) in `Workload::traces`.
fn trace_slot(mode: Mode, attention: Attention) -> usize {
    mode.index() * 2
        + match attention {
            Attention::Eager => 0,
            Attention::Sdpa => 1,
        }
}

impl Workload {
    pub(crate) fn trace(&self, mode: Mode, attention: Attention) -> &Trace {
        self.traces[trace_slot(mode, attention)]
            .get_or_init(|| arch::trace(&self.arch, &self.shape, mode, attention))
    }

    /// A trace for the module structure (stages and groups), which every precision and
    /// attention shares: one already built if there is one.
    fn trace0(&self) -> &Trace {
        match self.traces.iter().find_map(|t| t.get()) {
            Some(t) => t,
            None => self.trace(Mode::Fp32, self.defaults.attention),
        }
    }

    /// Module groups that `--checkpoint-modules` can name (repeated blocks first).
    pub fn module_groups(&self) -> Vec<String> {
        let t = self.trace0();
        let mut out: Vec<String> = Vec::new();
        for s in t.stages.iter().filter(|s| s.repeated) {
            if !out.contains(&s.group) {
                out.push(s.group.clone());
            }
        }
        out
    }

    /// FLOPs and attention traffic for the throughput model.
    pub fn compute_profile(&self, knobs: &Knobs) -> ComputeProfile {
        let mode = Mode::of(knobs.precision);
        let t = self.trace(mode, knobs.attention);
        let ck = crate::memory::checkpoint_flags(t, knobs);
        let mut fwd = 0.0;
        let mut rec = 0.0;
        let mut groups: Vec<GroupProfile> = Vec::new();
        let saved = crate::memory::saved_by_stage(t);
        let mut seen_stage = vec![false; t.stages.len()];
        for op in &t.ops {
            fwd += op.flops;
            if ck[op.stage] {
                rec += op.flops;
            }
            let st = &t.stages[op.stage];
            if !st.repeated {
                continue;
            }
            let gi = match groups.iter().position(|g| g.path == st.group) {
                Some(i) => i,
                None => {
                    groups.push(GroupProfile {
                        path: st.group.clone(),
                        blocks: 0,
                        forward_flops_per_sample: 0.0,
                        saved_bytes_per_sample: 0.0,
                        checkpointed: ck[op.stage],
                    });
                    groups.len() - 1
                }
            };
            if !seen_stage[op.stage] {
                seen_stage[op.stage] = true;
                groups[gi].blocks += 1;
                groups[gi].saved_bytes_per_sample += saved[op.stage];
            }
            groups[gi].forward_flops_per_sample += op.flops;
        }
        let elems = t.attention_matrix_elems;
        let traffic = match knobs.attention {
            Attention::Eager => {
                let sm = if mode == Mode::Mixed {
                    4.0
                } else {
                    mode.act_dt().bytes()
                };
                // ~8 passes over the matrix (QK^T write, softmax read+write, @V read, and the
                // same again in backward), in the dtype softmax runs in
                8.0 * elems * sm
            }
            Attention::Sdpa => 0.0,
        };
        ComputeProfile {
            forward_flops_per_sample: fwd,
            recompute_flops_per_sample: rec,
            attention_matrix_bytes_per_sample: traffic,
            attention_matrix_elems_per_sample: elems,
            params: self.params,
            trainable_params: self.trainable_params,
            groups,
        }
    }

    /// Resolves the knob flags against this workload's defaults.
    pub fn resolve_knobs(&self, args: &KnobArgs) -> Result<Knobs> {
        let k = args.resolve(&self.defaults)?;
        for m in &k.checkpoint_modules {
            let groups = self.module_groups();
            let t = self.trace0();
            let known = t
                .stages
                .iter()
                .any(|s| module_matches(m, &s.group) || module_matches(m, &s.path));
            if !known {
                return Err(Error::input(format!(
                    "--checkpoint-modules: no module '{m}' in {}; repeated blocks are: {}",
                    self.name,
                    groups.join(", ")
                )));
            }
        }
        Ok(k)
    }
}

/// `pattern` names `path` or one of its parents (`rgb_model.blocks` matches `rgb_model.blocks.3`;
/// `decoder` matches `decoder.3#pass1`).
pub fn module_matches(pattern: &str, path: &str) -> bool {
    let p = pattern.trim().trim_end_matches('.');
    if p.is_empty() {
        return false;
    }
    let path = path.split('#').next().unwrap_or(path);
    // `path == p || path.starts_with(p + ".")`, without building the string (the plan search
    // matches every stage against the modules for every candidate)
    path.strip_prefix(p)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Model description before shapes are applied (what the parsers return).
#[derive(Clone, Debug)]
pub struct ModelDesc {
    pub name: String,
    pub arch: Arch,
    pub defaults: KnobDefaults,
    /// Default shapes of the model (seq len, image size, classes, task).
    pub seq_len: u64,
    pub target_len: u64,
    pub image: u64,
    pub classes: u64,
    pub task: Task,
    /// Buffers in bytes at fp32 (BatchNorm statistics, attention masks...).
    pub buffer_bytes: u64,
    /// Parameter count the source declares (safetensors header), checked against the trace.
    pub declared_params: Option<u64>,
}

/// Resolves `--model`: `preset:NAME`, `hf:PATH/config.json`, `safetensors:PATH`, `trace:PATH`,
/// or a `.toml` workload file. Relative paths are taken from `base_dir`.
pub fn resolve(spec: &str, base_dir: &Path, knobs: &KnobArgs) -> Result<Workload> {
    let spec = spec.trim();
    let path_of = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    let desc = if let Some(name) = spec.strip_prefix("preset:") {
        presets::lookup(name)?
    } else if let Some(p) = spec.strip_prefix("hf:") {
        hf::load(&path_of(p))?
    } else if let Some(p) = spec.strip_prefix("safetensors:") {
        safetensors::load(&path_of(p))?
    } else if let Some(p) = spec.strip_prefix("trace:") {
        return trace_workload(&path_of(p));
    } else if spec.ends_with(".toml") {
        workload_toml::load(&path_of(spec.strip_prefix("toml:").unwrap_or(spec)))?
    } else if presets::exists(spec) {
        presets::lookup(spec)?
    } else {
        return Err(Error::input(format!(
            "--model '{spec}': expected preset:NAME, hf:PATH/config.json, safetensors:PATH, trace:PATH or a .toml workload file"
        )));
    };
    build(spec, desc, knobs)
}

/// The traced tier (`trace:PATH`, a trace written by the Python probe).
fn trace_workload(path: &Path) -> Result<Workload> {
    Err(Error::input(format!(
        "{}: a trace: model works with `oomdoc estimate` (the traced tier); plan and fit search with the analytic model: use preset:, hf:, safetensors: or a .toml workload",
        path.display()
    )))
}

/// Applies the knob shapes and traces the model.
pub fn build(source: &str, desc: ModelDesc, knobs: &KnobArgs) -> Result<Workload> {
    limits::check(&desc.arch).map_err(|e| Error::input(format!("{source}: {e}")))?;
    let sized = |v: Option<u64>, flag: &str, def: u64, max: u64| -> Result<u64> {
        match v {
            Some(x) => limits::range(flag, x, 1, max)
                .map(|_| x)
                .map_err(Error::input),
            None => Ok(def),
        }
    };
    let seq_len = sized(knobs.seq_len, "--seq-len", desc.seq_len, limits::MAX_COUNT)?;
    let target_len = sized(
        knobs.target_len,
        "--target-len",
        desc.target_len,
        limits::MAX_COUNT,
    )?;
    let image = sized(
        knobs.image_size,
        "--image-size",
        desc.image,
        limits::MAX_SIDE,
    )?;
    let classes = sized(
        knobs.num_classes,
        "--num-classes",
        desc.classes,
        limits::MAX_COUNT,
    )?;
    if let Arch::Lm(s) = &desc.arch {
        // a learned position table has a row per position: longer inputs index past it
        if s.positions > 0 && seq_len > s.positions {
            return Err(Error::input(format!(
                "--seq-len {seq_len}: {} has {} learned positions (n_positions / max_position_embeddings); a longer sequence fails in its position embedding",
                desc.name, s.positions
            )));
        }
    }
    if let Some(task) = knobs.task {
        let ok = match &desc.arch {
            Arch::Lm(s) => match s.style {
                arch::LmStyle::Bert => task == Task::MaskedLm,
                _ => task == Task::CausalLm,
            },
            Arch::T5(_) => task == Task::Seq2seqLm,
            Arch::Vit(_) | Arch::Resnet(_) => task == Task::ImageClassification,
            Arch::Navdp(_) => false,
        };
        if !ok {
            return Err(Error::input(format!(
                "--task {}: {} is trained as {}",
                serde_json::to_value(task)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                desc.name,
                serde_json::to_value(desc.task)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )));
        }
    }
    if let Arch::Vit(v) = &desc.arch {
        if image % v.patch != 0 {
            return Err(Error::input(format!(
                "--image-size {image} is not a multiple of the patch size {}",
                v.patch
            )));
        }
    }
    if let Arch::Navdp(_) = &desc.arch {
        if knobs.image_size.is_some() && image % 14 != 0 {
            return Err(Error::input(format!(
                "--image-size {image} is not a multiple of 14"
            )));
        }
    }
    if knobs.lora_rank.is_some() && knobs.lora_targets.is_empty() {
        return Err(Error::input(
            "--lora-rank needs --lora-targets (module names, e.g. q_proj,v_proj)",
        ));
    }
    let mut arch = desc.arch.clone();
    if let Arch::Navdp(n) = &mut arch {
        n.image = image;
    }
    let shape = Shape {
        seq_len,
        target_len,
        image,
        classes,
        task: knobs.task.unwrap_or(desc.task),
        lora_rank: knobs.lora_rank.unwrap_or(0),
        lora_targets: knobs.lora_targets.clone(),
    };
    let traces: [OnceLock<Trace>; 6] = Default::default();
    // Parameters are the same in every precision and attention: trace the one the knobs ask
    // for, so that the estimate that follows does not trace the model a second time.
    let mode = Mode::of(knobs.precision.unwrap_or(crate::knobs::Precision::Fp32));
    let attention = knobs.attention.unwrap_or(desc.defaults.attention);
    let t0 = arch::trace(&arch, &shape, mode, attention);
    let params: u64 = t0.params.iter().map(|p| p.elems()).sum();
    let trainable: u64 = t0
        .params
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.elems())
        .sum();
    if shape.lora_rank > 0 && t0.params.iter().all(|p| !p.path.contains("lora_")) {
        return Err(Error::input(format!(
            "--lora-targets {}: no linear layer of {} has that name",
            shape.lora_targets.join(","),
            desc.name
        )));
    }
    let slot = trace_slot(mode, attention);
    if let Some(declared) = desc.declared_params {
        let lora: u64 = t0
            .params
            .iter()
            .filter(|p| p.path.contains("lora_"))
            .map(|p| p.elems())
            .sum();
        let base = params - lora;
        let diff = (base as f64 - declared as f64).abs() / declared.max(1) as f64;
        if diff > 0.02 {
            return Err(Error::input(format!(
                "{source}: the header holds {declared} parameters but the {} architecture from its config has {base}; the config does not describe these weights",
                desc.name
            )));
        }
    }
    let _ = traces[slot].set(t0);
    Ok(Workload {
        name: desc.name,
        source: source.to_string(),
        arch,
        shape,
        params,
        trainable_params: trainable,
        buffer_bytes: desc.buffer_bytes,
        defaults: desc.defaults,
        traces: Arc::new(traces),
        cache: Arc::new(Mutex::new(Default::default())),
    })
}

#[cfg(test)]
mod tests {
    use super::module_matches;
    use crate::knobs::{Checkpointing, KnobArgs, Precision};
    use std::path::Path;

    /// torchvision's ResNet rounds up at every stride-2 layer (`floor((H + 2p - k) / 2) + 1`):
    /// at 225 px the stem gives 113 x 113, the max pool 57 x 57 and the last stage 8 x 8 (the
    /// walk had 112, 56 and 7, as at 224 px).
    #[test]
    fn resnet_feature_maps_round_up_at_odd_sizes() {
        let args = KnobArgs {
            image_size: Some(225),
            ..KnobArgs::default()
        };
        let w = super::resolve("preset:resnet50", Path::new("."), &args).unwrap();
        let t = w.trace(
            crate::model::graph::Mode::Fp32,
            crate::knobs::Attention::Sdpa,
        );
        let has = |elems: u64| t.tensors.iter().any(|x| x.elems == elems as f64);
        assert!(has(64 * 113 * 113), "stem");
        assert!(has(64 * 57 * 57), "max pool");
        assert!(has(2048 * 8 * 8), "last stage");
        assert!(!has(2048 * 7 * 7), "last stage rounded down");
    }

    /// transformers' rotary embedding hands back `cos` / `sin` in the hidden states' dtype,
    /// fp32 under autocast: `k * cos` of a bf16 k is an fp32 tensor of k's size (the CPU trace
    /// of Qwen2.5-0.5B under autocast holds them for q and k in every layer). In bf16-true the
    /// products keep k's dtype.
    #[test]
    fn rotary_products_are_fp32_under_autocast() {
        use crate::model::graph::{Dt, Mode};
        let w =
            super::resolve("preset:qwen2.5-0.5b", Path::new("."), &KnobArgs::default()).unwrap();
        // k of one sample: seq x 2 key/value heads x 64 (no other tensor has this size)
        let k = (w.shape.seq_len * 2 * 64) as f64;
        let count = |mode: Mode, dt: Dt| {
            let t = w.trace(mode, crate::knobs::Attention::Sdpa);
            t.tensors
                .iter()
                .filter(|x| x.elems == k && x.dt == dt)
                .count()
        };
        // per layer: the two products and their sum
        assert_eq!(count(Mode::Mixed, Dt::F32), 3 * 24);
        assert_eq!(count(Mode::HalfTrue, Dt::F32), 0);
    }

    /// `resolve` traces the model in the precision and attention it is given (so that the
    /// estimate that follows does not trace it twice); what it reports and what any later
    /// estimate computes must not depend on that.
    #[test]
    fn the_precision_resolved_in_changes_no_figure() {
        for (model, args) in [
            (
                "preset:navdp",
                KnobArgs {
                    batch: Some(4),
                    precision: Some(Precision::Bf16Mixed),
                    checkpointing: Some(Checkpointing::Full),
                    ..KnobArgs::default()
                },
            ),
            (
                "preset:gpt2",
                KnobArgs {
                    batch: Some(2),
                    precision: Some(Precision::Bf16True),
                    attention: Some(crate::knobs::Attention::Eager),
                    ..KnobArgs::default()
                },
            ),
        ] {
            let plain = super::resolve(model, Path::new("."), &KnobArgs::default()).unwrap();
            let asked = super::resolve(model, Path::new("."), &args).unwrap();
            assert_eq!(plain.params, asked.params, "{model}");
            assert_eq!(plain.trainable_params, asked.trainable_params, "{model}");
            assert_eq!(plain.module_groups(), asked.module_groups(), "{model}");
            for a in [&args, &KnobArgs::default()] {
                let e1 = crate::memory::estimate(&plain, &plain.resolve_knobs(a).unwrap()).unwrap();
                let e2 = crate::memory::estimate(&asked, &asked.resolve_knobs(a).unwrap()).unwrap();
                assert_eq!(e1, e2, "{model}");
            }
        }
    }

    #[test]
    fn module_patterns_match_the_path_and_its_children() {
        assert!(module_matches("rgb_model.blocks", "rgb_model.blocks"));
        assert!(module_matches("rgb_model.blocks", "rgb_model.blocks.3"));
        assert!(module_matches(" rgb_model.blocks. ", "rgb_model.blocks.3"));
        assert!(module_matches("decoder", "decoder.3#pass1"));
        assert!(!module_matches("rgb_model.block", "rgb_model.blocks.3"));
        assert!(!module_matches("rgb_model.blocks", "rgb_model"));
        assert!(!module_matches("", "rgb_model"));
        assert!(!module_matches(".", "rgb_model"));
    }
}
