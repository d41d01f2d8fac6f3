//! `fix`: turning a plan into edits of the user's own training code.
//!
//! The project is read with a real Python parser (tree-sitter); each requested knob is put where
//! it really takes effect (a value is followed to the config module or file that sets it; a
//! `Trainer` subclass that builds its own DataLoader or optimizer makes the `TrainingArguments`
//! fields dead; checkpointing goes into the model when Hugging Face's flag would fail). Edits are
//! byte-range replacements at syntax nodes, so formatting and comments are kept. The result is a
//! [`Patch`]: per file a unified diff whose hunks carry their explanations, plus notes for what
//! was not edited and why. [`apply::apply`] writes it safely.

pub mod apply;
pub mod datafile;
mod edit;
pub mod flow;
pub mod hfargs;
mod model;
mod plain;
pub mod project;
pub mod py;
pub mod report;
mod trainers;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::knobs::{Attention, Checkpointing, KnobArgs, Knobs, Optimizer, Precision};

pub use report::M;

/// DataLoader settings to write.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DataLoaderOpts {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub num_workers: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pin_memory: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub persistent_workers: Option<bool>,
}

impl DataLoaderOpts {
    pub fn is_empty(&self) -> bool {
        self.num_workers.is_none() && self.pin_memory.is_none() && self.persistent_workers.is_none()
    }
}

/// What `fix` should make the project do. Every field is optional: only what is set is changed.
/// `plan` converts its chosen configuration with [`Target::from_plan`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_accum: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub precision: Option<Precision>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checkpointing: Option<Checkpointing>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub checkpoint_modules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attention: Option<Attention>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub optimizer: Option<Optimizer>,
    #[serde(skip_serializing_if = "DataLoaderOpts::is_empty", default)]
    pub dataloader: DataLoaderOpts,
    /// Value for `PYTORCH_CUDA_ALLOC_CONF`, e.g. `expandable_segments:True`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alloc_conf: Option<String>,
    /// Target GPU name (for the bf16 check), when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gpu: Option<String>,
    /// Whether that GPU has native bf16 (None: unknown).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bf16_supported: Option<bool>,
}

impl Target {
    /// From knob flags as given on the command line (unset flags change nothing).
    pub fn from_knob_args(k: &KnobArgs) -> Result<Target> {
        if k.batch == Some(0) {
            return Err(Error::input("--batch must be at least 1"));
        }
        if k.grad_accum == Some(0) {
            return Err(Error::input("--grad-accum must be at least 1"));
        }
        let ck = k.checkpointing;
        if ck == Some(Checkpointing::Selective) && k.checkpoint_modules.is_empty() {
            return Err(Error::input(
                "--checkpointing selective needs --checkpoint-modules (module paths, e.g. rgb_model.blocks)",
            ));
        }
        if !k.checkpoint_modules.is_empty() && ck != Some(Checkpointing::Selective) {
            return Err(Error::input(
                "--checkpoint-modules only applies with --checkpointing selective",
            ));
        }
        Ok(Target {
            batch: k.batch,
            grad_accum: k.grad_accum,
            precision: k.precision,
            checkpointing: ck,
            checkpoint_modules: k.checkpoint_modules.clone(),
            attention: k.attention,
            optimizer: k.optimizer,
            ..Target::default()
        })
    }

    /// From a plan's chosen configuration: only the knobs that differ from the baseline (the
    /// configuration that ran out of memory) become changes.
    pub fn from_plan(chosen: &Knobs, baseline: &Knobs) -> Target {
        fn diff<T: PartialEq + Copy>(a: T, b: T) -> Option<T> {
            (a != b).then_some(a)
        }
        let ck_changed = chosen.checkpointing != baseline.checkpointing
            || chosen.checkpoint_modules != baseline.checkpoint_modules;
        Target {
            batch: diff(chosen.batch, baseline.batch),
            grad_accum: diff(chosen.grad_accum, baseline.grad_accum),
            precision: diff(chosen.precision, baseline.precision),
            checkpointing: ck_changed.then_some(chosen.checkpointing),
            checkpoint_modules: if ck_changed {
                chosen.checkpoint_modules.clone()
            } else {
                vec![]
            },
            attention: diff(chosen.attention, baseline.attention),
            optimizer: diff(chosen.optimizer, baseline.optimizer),
            ..Target::default()
        }
    }

    /// Sets the GPU (catalogue id or name) used for the bf16 check.
    pub fn with_gpu(mut self, name: &str) -> Result<Target> {
        let spec = crate::gpu::lookup(name)?;
        self.gpu = Some(spec.name.to_string());
        self.bf16_supported = Some(spec.bf16);
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_none()
            && self.grad_accum.is_none()
            && self.precision.is_none()
            && self.checkpointing.is_none()
            && self.attention.is_none()
            && self.optimizer.is_none()
            && self.dataloader.is_empty()
            && self.alloc_conf.is_none()
    }
}

/// The knob a change or note belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Knob {
    Batch,
    GradAccum,
    Precision,
    Checkpointing,
    Attention,
    Optimizer,
    Dataloader,
    AllocConf,
    LearningRate,
}

impl Knob {
    pub fn name(self) -> &'static str {
        match self {
            Knob::Batch => "batch",
            Knob::GradAccum => "grad-accum",
            Knob::Precision => "precision",
            Knob::Checkpointing => "checkpointing",
            Knob::Attention => "attention",
            Knob::Optimizer => "optimizer",
            Knob::Dataloader => "dataloader",
            Knob::AllocConf => "alloc-conf",
            Knob::LearningRate => "learning-rate",
        }
    }
}

/// The training set-ups recognised in a project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framework {
    HfTrainer,
    Lightning,
    Accelerate,
    Deepspeed,
    PlainLoop,
}

impl Framework {
    pub fn name(self) -> &'static str {
        match self {
            Framework::HfTrainer => "Hugging Face Trainer",
            Framework::Lightning => "Lightning",
            Framework::Accelerate => "accelerate",
            Framework::Deepspeed => "DeepSpeed",
            Framework::PlainLoop => "plain PyTorch loop",
        }
    }
}

/// An explanation: a catalogue entry and its arguments (rendered per language by `report`).
#[derive(Clone, Debug, PartialEq)]
pub struct Msg {
    pub id: M,
    pub args: Vec<String>,
}

impl Msg {
    pub fn new(id: M, args: &[&dyn std::fmt::Display]) -> Msg {
        Msg {
            id,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }
    pub fn text(&self, lang: crate::report::Lang) -> String {
        let args: Vec<&dyn std::fmt::Display> = self
            .args
            .iter()
            .map(|a| a as &dyn std::fmt::Display)
            .collect();
        crate::report::fill(self.id.text(lang), &args)
    }
}

impl Serialize for Msg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Msg", 3)?;
        st.serialize_field("id", &format!("{:?}", self.id))?;
        st.serialize_field("args", &self.args)?;
        st.serialize_field("text", &self.text(crate::report::Lang::En))?;
        st.end()
    }
}

/// One explained change inside a hunk.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub knob: Knob,
    /// 1-based line in the original file where the change starts.
    pub line: usize,
    pub why: Msg,
}

/// One hunk of a file's unified diff, with the changes it carries.
#[derive(Clone, Debug, Serialize)]
pub struct Hunk {
    /// The hunk as unified-diff text, starting with its `@@` line.
    pub text: String,
    pub changes: Vec<Change>,
}

/// The edits of one file.
#[derive(Clone, Debug, Serialize)]
pub struct FilePatch {
    /// Project-relative path.
    pub path: String,
    /// The whole unified diff of this file (`--- a/PATH`, `+++ b/PATH`, hunks).
    pub diff: String,
    pub hunks: Vec<Hunk>,
    /// Content as read (to detect later changes before writing).
    #[serde(skip)]
    pub original: String,
    #[serde(skip)]
    pub new: String,
}

/// Something not edited (or to be known) about a knob.
#[derive(Clone, Debug, Serialize)]
pub struct Note {
    pub knob: Knob,
    pub msg: Msg,
}

/// The result of `fix`: the diff with explanations, and notes.
#[derive(Clone, Debug, Serialize)]
pub struct Patch {
    pub root: String,
    pub frameworks: Vec<Framework>,
    pub target: Target,
    pub files: Vec<FilePatch>,
    pub notes: Vec<Note>,
}

impl Patch {
    /// The plain unified diff of every file (what `git apply` / `patch -p1` take).
    pub fn unified_diff(&self) -> String {
        self.files.iter().map(|f| f.diff.as_str()).collect()
    }
}

/// Reads the project at `root` and computes the patch that applies `target`.
pub fn analyze(root: &Path, target: &Target) -> Result<Patch> {
    if target.is_empty() {
        return Err(Error::input(
            "nothing to change: give at least one of --batch, --grad-accum, --precision, --checkpointing, --attention, --optimizer, --num-workers, --pin-memory, --persistent-workers, --alloc-conf",
        ));
    }
    let project = project::Project::load(root)?;
    analyze_project(&project, target)
}

/// [`analyze`] of a project already read (in memory, for the fuzz target).
pub fn analyze_project(project: &project::Project, target: &Target) -> Result<Patch> {
    if target.is_empty() {
        return Err(Error::input("nothing to change"));
    }
    let root = &project.root;
    let mut cx = edit::Cx::new(project, target.clone());
    cx.check_bf16();
    let setup = trainers::detect(project);
    if setup.is_empty() {
        return Err(Error::input(format!(
            "{}: no training code found in {} Python file(s): looked for Hugging Face TrainingArguments/Trainer, Lightning Trainer, accelerate Accelerator, DeepSpeed JSON configs, and plain loops calling loss.backward() and optimizer.step()",
            root.display(),
            project.py.len()
        )));
    }
    cx.frameworks = setup.frameworks();
    trainers::apply_rules(&mut cx, &setup);
    plain::apply_rules(&mut cx, &setup);
    model::apply_rules(&mut cx, &setup);
    edit::alloc_conf(&mut cx, &setup);
    cx.learning_rate_note(&setup);
    let (files, notes, frameworks) = cx.finish()?;
    Ok(Patch {
        root: root.display().to_string(),
        frameworks,
        target: target.clone(),
        files,
        notes,
    })
}

#[cfg(test)]
mod tests;
