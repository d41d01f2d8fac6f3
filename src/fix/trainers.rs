//! Recognising the training set-up (Hugging Face Trainer and its subclasses, Lightning,
//! accelerate, DeepSpeed configs, plain loops) and the rules that put batch size, accumulation,
//! precision, optimizer and DataLoader settings where they take effect.
use tree_sitter::Node;

use super::datafile;
use super::edit::Cx;
use super::flow;
use super::hfargs::HfArgs;
use super::project::{OtherKind, Project};
use super::py::{self, PyFile};
use super::{Framework, Knob, Msg, M};
use crate::knobs::{Optimizer, Precision};

/// Optimizer classes recognised as the training optimizer's constructor.
const OPTIMIZERS: &[&str] = &[
    "Adam",
    "AdamW",
    "SGD",
    "Adafactor",
    "AdamW8bit",
    "Adam8bit",
    "PagedAdamW8bit",
    "RMSprop",
    "Adagrad",
    "Lion",
];

/// Methods of a Hugging Face `Trainer` subclass that take over what `TrainingArguments` sets.
const HF_DATALOADER_METHODS: &[&str] = &["get_train_dataloader"];
const HF_OPTIMIZER_METHODS: &[&str] = &["create_optimizer", "create_optimizer_and_scheduler"];

/// A syntax node in file `.0`.
pub type At<'p> = (usize, Node<'p>);

#[derive(Default)]
pub struct Setup<'p> {
    /// `TrainingArguments(...)` calls.
    pub hf_args: Vec<At<'p>>,
    /// Classes deriving from a Hugging Face Trainer.
    pub hf_subclasses: Vec<At<'p>>,
    /// `Trainer(...)` / subclass instantiations (Hugging Face).
    pub hf_trainers: Vec<At<'p>>,
    /// Lightning `Trainer(...)` calls.
    pub pl_trainers: Vec<At<'p>>,
    /// Files that start training through `LightningCLI` (Trainer settings in YAML).
    pub pl_cli: Vec<usize>,
    pub accelerators: Vec<At<'p>>,
    /// Indices into `Project::other` of DeepSpeed JSON configs.
    pub ds_configs: Vec<usize>,
    /// `X.backward()` calls (plain loops).
    pub backwards: Vec<At<'p>>,
    pub dataloaders: Vec<At<'p>>,
    pub optimizers: Vec<At<'p>>,
    /// Files that parse TrainingArguments with `HfArgumentParser`.
    pub hf_cli: Vec<usize>,
    /// Set by the Hugging Face rule: the flag `gradient_checkpointing=True` was used.
    pub hf_ckpt_flag: std::cell::Cell<bool>,
}

impl<'p> Setup<'p> {
    pub fn is_empty(&self) -> bool {
        self.hf_args.is_empty()
            && self.hf_cli.is_empty()
            && self.hf_trainers.is_empty()
            && self.pl_trainers.is_empty()
            && self.pl_cli.is_empty()
            && self.accelerators.is_empty()
            && self.ds_configs.is_empty()
            && self.backwards.is_empty()
    }

    pub fn frameworks(&self) -> Vec<Framework> {
        let mut v = Vec::new();
        if !self.hf_args.is_empty() || !self.hf_trainers.is_empty() || !self.hf_cli.is_empty() {
            v.push(Framework::HfTrainer);
        }
        if !self.pl_trainers.is_empty() || !self.pl_cli.is_empty() {
            v.push(Framework::Lightning);
        }
        if !self.accelerators.is_empty() {
            v.push(Framework::Accelerate);
        }
        if !self.ds_configs.is_empty() {
            v.push(Framework::Deepspeed);
        }
        if v.is_empty() && !self.backwards.is_empty() {
            v.push(Framework::PlainLoop);
        }
        v
    }

    /// The file that starts training (where the trainer or the loop is).
    pub fn entry_file(&self) -> Option<usize> {
        self.hf_trainers
            .first()
            .or(self.hf_args.first())
            .or(self.pl_trainers.first())
            .or(self.accelerators.first())
            .or(self.backwards.first())
            .map(|(fi, _)| *fi)
    }
}

fn imports_from(f: &PyFile, prefixes: &[&str]) -> bool {
    py::imports(f).iter().any(|i| {
        let t = f.text(*i);
        prefixes.iter().any(|p| t.contains(p))
    })
}

/// Finds the training set-up in a project.
pub fn detect(p: &Project) -> Setup<'_> {
    let mut s = Setup::default();
    let mut hf_class_names: Vec<String> = Vec::new();
    for (fi, f) in p.py.iter().enumerate() {
        let hf = imports_from(f, &["transformers", "trl"]);
        for n in f.all_nodes() {
            if n.kind() == "class_definition" && hf {
                let sup = py::superclasses(f, n);
                if sup.iter().any(|c| {
                    matches!(
                        py::last_name(c),
                        "Trainer" | "Seq2SeqTrainer" | "SFTTrainer"
                    )
                }) {
                    s.hf_subclasses.push((fi, n));
                    hf_class_names.push(py::def_name(f, n).to_string());
                }
            }
        }
    }
    for (fi, f) in p.py.iter().enumerate() {
        let hf = imports_from(f, &["transformers", "trl"]);
        let pl = imports_from(f, &["lightning", "pytorch_lightning"]);
        if f.src.contains("HfArgumentParser(") {
            s.hf_cli.push(fi);
        }
        if f.src.contains("LightningCLI(") {
            s.pl_cli.push(fi);
        }
        for n in f.all_nodes() {
            if n.kind() != "call" {
                continue;
            }
            let c = py::callee(f, n);
            let last = py::last_name(&c);
            match last {
                "TrainingArguments" | "Seq2SeqTrainingArguments" | "SFTConfig" => {
                    s.hf_args.push((fi, n))
                }
                "Trainer" | "Seq2SeqTrainer" | "SFTTrainer" => {
                    if c.starts_with("L.")
                        || c.starts_with("pl.")
                        || c.contains("lightning")
                        || (pl && !hf)
                    {
                        s.pl_trainers.push((fi, n));
                    } else if hf {
                        s.hf_trainers.push((fi, n));
                    }
                }
                "Accelerator" => s.accelerators.push((fi, n)),
                "DataLoader" => s.dataloaders.push((fi, n)),
                "backward" => {
                    let obj = n
                        .child_by_field_name("function")
                        .and_then(|fun| fun.child_by_field_name("object"))
                        .map(|o| f.text(o).to_string());
                    // `loss.backward()` (not `accelerator.backward(loss)` or `scaler.scale(loss).backward()` alike).
                    if py::positional(n).is_empty() && obj.is_some() {
                        s.backwards.push((fi, n));
                    }
                }
                _ if OPTIMIZERS.contains(&last) => s.optimizers.push((fi, n)),
                _ if hf_class_names.iter().any(|h| h == last) => s.hf_trainers.push((fi, n)),
                _ => {}
            }
        }
    }
    for (oi, o) in p.other.iter().enumerate() {
        if o.kind == OtherKind::Json
            && (o.src.contains("\"train_micro_batch_size_per_gpu\"")
                || o.src.contains("\"zero_optimization\""))
        {
            s.ds_configs.push(oi);
        }
    }
    s
}

/// Runs the framework rules.
pub fn apply_rules<'p>(cx: &mut Cx<'p>, s: &Setup<'p>) {
    if !s.hf_args.is_empty() {
        let (fi, ta) = training_args_call(cx.p, s);
        hf_rules(cx, s, HfArgs::Call(fi, ta));
    } else if !s.hf_cli.is_empty() {
        match hf_cli_args(cx.p) {
            Some(args) => hf_rules(cx, s, args),
            None => cx.note(Knob::Batch, M::HfCliNoArgs, &[]),
        }
    }
    for &(fi, call) in &s.pl_trainers {
        lightning_rules(cx, s, fi, call);
    }
    if s.pl_trainers.is_empty() && !s.pl_cli.is_empty() {
        lightning_cli_rules(cx, s);
    }
    for &(fi, call) in &s.accelerators {
        accelerate_rules(cx, s, fi, call);
    }
    for &oi in &s.ds_configs {
        deepspeed_rules(cx, s, oi);
    }
}

fn loc(f: &PyFile, n: Node) -> String {
    format!("{}:{}", f.rel, f.line_of(n.start_byte()))
}

fn precision_flags(prec: Precision) -> Option<(&'static str, &'static str)> {
    match prec {
        Precision::Bf16Mixed => Some(("bf16", "fp16")),
        Precision::Fp16Mixed => Some(("fp16", "bf16")),
        _ => None,
    }
}

fn hf_rules<'p>(cx: &mut Cx<'p>, s: &Setup<'p>, args: HfArgs<'p>) {
    let p = cx.p;
    let ta_name = args.label(p);
    let sub = s.hf_subclasses.first().copied();
    let sub_name = sub
        .map(|(sfi, c)| py::def_name(&p.py[sfi], c).to_string())
        .unwrap_or_default();
    let own_loader = sub.and_then(|(sfi, c)| {
        HF_DATALOADER_METHODS
            .iter()
            .find_map(|m| py::method(&p.py[sfi], c, m))
            .and_then(|m| {
                s.dataloaders
                    .iter()
                    .find(|(dfi, d)| {
                        *dfi == sfi
                            && m.start_byte() <= d.start_byte()
                            && d.end_byte() <= m.end_byte()
                    })
                    .copied()
                    .map(|d| (d, py::def_name(&p.py[sfi], m).to_string()))
            })
    });
    let own_opt = sub.and_then(|(sfi, c)| {
        HF_OPTIMIZER_METHODS
            .iter()
            .find_map(|m| py::method(&p.py[sfi], c, m))
            .and_then(|m| {
                s.optimizers
                    .iter()
                    .find(|(ofi, o)| {
                        *ofi == sfi
                            && m.start_byte() <= o.start_byte()
                            && o.end_byte() <= m.end_byte()
                    })
                    .copied()
                    .map(|o| (o, py::def_name(&p.py[sfi], m).to_string()))
            })
    });

    // Effective batch before the change, learning rate.
    let batch_site = match own_loader {
        Some(((dfi, dl), _)) => {
            py::kwarg_value(&p.py[dfi], dl, "batch_size").map(|v| flow::resolve(p, dfi, v))
        }
        None => args.get(p, "per_device_train_batch_size").map(Some),
    };
    cx.eff.old_batch = match batch_site {
        Some(site) => site.and_then(|s| s.int()),
        None if own_loader.is_none() => Some(8), // TrainingArguments default per_device_train_batch_size
        None => Some(1),                         // DataLoader default batch_size
    };
    cx.eff.old_accum = Some(
        args.get(p, "gradient_accumulation_steps")
            .and_then(|s| s.int())
            .unwrap_or(1),
    );
    cx.eff.lr = match own_opt {
        Some(((ofi, o), _)) => {
            py::kwarg_value(&p.py[ofi], o, "lr").and_then(|v| flow::resolve(p, ofi, v))
        }
        None => args.get(p, "learning_rate"),
    };

    // Batch size.
    if let Some(b) = cx.t.batch {
        match own_loader {
            Some(((dfi, dl), ref meth)) => {
                let df = &p.py[dfi];
                let expr = py::kwarg_value(df, dl, "batch_size")
                    .map(|v| df.text(v).to_string())
                    .unwrap_or_default();
                if expr.starts_with("self.args.") || expr.starts_with("self._train_batch_size") {
                    // The subclass reads TrainingArguments: the argument is live.
                    let why = Msg::new(M::HfBatchArg, &[&ta_name]);
                    args.set(
                        cx,
                        "per_device_train_batch_size",
                        &b.to_string(),
                        Knob::Batch,
                        why,
                    );
                } else {
                    let why = Msg::new(
                        M::HfBatchDead,
                        &[&ta_name, &format!("{sub_name}.{meth}"), &expr],
                    );
                    let site =
                        cx.set_kwarg(dfi, dl, "batch_size", &b.to_string(), Knob::Batch, why);
                    // A literal in TrainingArguments that is not the same setting: say it is ignored.
                    if let Some(at) = args.loc(p, "per_device_train_batch_size") {
                        let same = match (&site, args.get(p, "per_device_train_batch_size")) {
                            (Some(a), Some(b)) => a.file == b.file && a.start == b.start,
                            _ => false,
                        };
                        if !same {
                            cx.note(
                                Knob::Batch,
                                M::HfArgIgnored,
                                &[
                                    &at,
                                    &"per_device_train_batch_size",
                                    &format!("{sub_name}.{meth}"),
                                ],
                            );
                        }
                    }
                }
            }
            None => {
                let why = Msg::new(M::HfBatchArg, &[&ta_name]);
                args.set(
                    cx,
                    "per_device_train_batch_size",
                    &b.to_string(),
                    Knob::Batch,
                    why,
                );
            }
        }
    }

    // Accumulation.
    if let Some(k) = cx.t.grad_accum {
        let why = Msg::new(M::HfAccum, &[&ta_name]);
        args.set(
            cx,
            "gradient_accumulation_steps",
            &k.to_string(),
            Knob::GradAccum,
            why,
        );
    }

    // Precision.
    if let Some(prec) = cx.t.precision {
        match precision_flags(prec) {
            Some((on, off)) => {
                args.set(
                    cx,
                    on,
                    "True",
                    Knob::Precision,
                    Msg::new(M::HfPrecision, &[&on, &prec.name()]),
                );
                {
                    if args.get_bool(p, off) == Some(true) {
                        args.set(
                            cx,
                            off,
                            "False",
                            Knob::Precision,
                            Msg::new(M::HfPrecisionOff, &[&off]),
                        );
                    }
                }
            }
            None => match prec {
                Precision::Tf32 => {
                    args.set(
                        cx,
                        "tf32",
                        "True",
                        Knob::Precision,
                        Msg::new(M::HfTf32, &[]),
                    );
                }
                Precision::Fp32 => {
                    for flag in ["bf16", "fp16"] {
                        {
                            if args.get_bool(p, flag) == Some(true) {
                                args.set(
                                    cx,
                                    flag,
                                    "False",
                                    Knob::Precision,
                                    Msg::new(M::HfPrecisionOff, &[&flag]),
                                );
                            }
                        }
                    }
                }
                _ => cx.note(Knob::Precision, M::HfTruePrecision, &[&prec.name()]),
            },
        }
    }

    // Checkpointing: the flag only when the model supports it.
    if let Some(ck) = cx.t.checkpointing {
        if ck != crate::knobs::Checkpointing::None {
            match hf_model_support(p, s) {
                HfSupport::Supported(model) => {
                    if ck == crate::knobs::Checkpointing::Full {
                        args.set(
                            cx,
                            "gradient_checkpointing",
                            "True",
                            Knob::Checkpointing,
                            Msg::new(M::HfCkpt, &[&model]),
                        );
                        s.hf_ckpt_flag.set(true);
                    } else {
                        cx.note(Knob::Checkpointing, M::HfCkptSelective, &[&model]);
                    }
                }
                HfSupport::Unsupported(model, at) => {
                    cx.note(Knob::Checkpointing, M::HfCkptTrap, &[&model, &at]);
                    // Already on (the crash the user may have hit): turn it off.
                    {
                        if args.get_bool(p, "gradient_checkpointing") == Some(true) {
                            let why = Msg::new(M::HfCkptOff, &[&model]);
                            args.set(
                                cx,
                                "gradient_checkpointing",
                                "False",
                                Knob::Checkpointing,
                                why,
                            );
                        }
                    }
                }
                HfSupport::Unknown => {}
            }
        }
    }

    // Optimizer.
    if let Some(o) = cx.t.optimizer {
        match own_opt {
            Some(((ofi, call), ref meth)) => {
                let why_ctx = format!("{sub_name}.{meth}");
                optimizer_rewrite(cx, ofi, call, o, Some(&why_ctx));
                if let Some(at) = args.loc(p, "optim") {
                    cx.note(Knob::Optimizer, M::HfArgIgnored, &[&at, &"optim", &why_ctx]);
                }
            }
            None => {
                let (name, extra) = match o {
                    Optimizer::Adamw => ("adamw_torch", None),
                    Optimizer::AdamwFused => ("adamw_torch_fused", None),
                    Optimizer::Adam => {
                        cx.note(Knob::Optimizer, M::HfAdam, &[]);
                        ("adamw_torch", None)
                    }
                    Optimizer::Sgd => ("sgd", None),
                    Optimizer::SgdMomentum => ("sgd", Some("\"momentum=0.9\"")),
                    Optimizer::Adafactor => ("adafactor", None),
                    Optimizer::Adamw8bit => ("adamw_bnb_8bit", None),
                };
                args.set(
                    cx,
                    "optim",
                    &format!("\"{name}\""),
                    Knob::Optimizer,
                    Msg::new(M::HfOptim, &[&name]),
                );
                if let Some(extra) = extra {
                    args.set(
                        cx,
                        "optim_args",
                        extra,
                        Knob::Optimizer,
                        Msg::new(M::HfOptim, &[&name]),
                    );
                }
                if o == Optimizer::Adamw8bit {
                    cx.note(Knob::Optimizer, M::NeedsBnb, &[]);
                }
            }
        }
    }

    // DataLoader settings.
    let dl = cx.t.dataloader.clone();
    if !dl.is_empty() {
        match own_loader {
            Some(((dfi, call), ref meth)) => {
                let ctx = format!("{sub_name}.{meth}");
                dataloader_opts(cx, dfi, call, Some(&ctx), Some(args));
                for (flag, set) in [
                    ("dataloader_num_workers", dl.num_workers.is_some()),
                    ("dataloader_pin_memory", dl.pin_memory.is_some()),
                    (
                        "dataloader_persistent_workers",
                        dl.persistent_workers.is_some(),
                    ),
                ] {
                    if let (true, Some(at)) = (set, args.loc(p, flag)) {
                        cx.note(Knob::Dataloader, M::HfArgIgnored, &[&at, &flag, &ctx]);
                    }
                }
            }
            None => {
                if let Some(n) = dl.num_workers {
                    args.set(
                        cx,
                        "dataloader_num_workers",
                        &n.to_string(),
                        Knob::Dataloader,
                        Msg::new(M::HfDl, &[&"dataloader_num_workers"]),
                    );
                }
                if let Some(b) = dl.pin_memory {
                    args.set(
                        cx,
                        "dataloader_pin_memory",
                        py_bool(b),
                        Knob::Dataloader,
                        Msg::new(M::HfDl, &[&"dataloader_pin_memory"]),
                    );
                }
                if let Some(b) = dl.persistent_workers {
                    args.set(
                        cx,
                        "dataloader_persistent_workers",
                        py_bool(b),
                        Knob::Dataloader,
                        Msg::new(M::HfDl, &[&"dataloader_persistent_workers"]),
                    );
                }
            }
        }
    }
}

/// Fields of `TrainingArguments` read by `HfArgumentParser` from the command line (a launch
/// script passing `--per_device_train_batch_size ...`) or from a JSON file.
fn hf_cli_args(p: &Project) -> Option<HfArgs<'_>> {
    /// Fields that mark a file as holding TrainingArguments.
    const FIELDS: &[&str] = &[
        "output_dir",
        "per_device_train_batch_size",
        "learning_rate",
        "num_train_epochs",
        "gradient_accumulation_steps",
    ];
    let shell = p.other.iter().position(|o| {
        o.kind == OtherKind::Shell
            && super::hfargs::shell_tokens(&o.src).iter().any(|t| {
                FIELDS
                    .iter()
                    .any(|f| t.text == format!("--{f}") || t.text.starts_with(&format!("--{f}=")))
            })
    });
    let json = p.other.iter().position(|o| {
        o.kind == OtherKind::Json
            && datafile::json_scalars(&o.src)
                .map(|ks| {
                    ks.iter()
                        .any(|k| k.path.len() == 1 && FIELDS.contains(&k.path[0].as_str()))
                })
                .unwrap_or(false)
    });
    shell.map(HfArgs::Shell).or(json.map(HfArgs::Json))
}

/// The `TrainingArguments(...)` given to the Trainer (`args=NAME`), else the first one.
fn training_args_call<'p>(p: &'p Project, s: &Setup<'p>) -> At<'p> {
    for &(tfi, tr) in &s.hf_trainers {
        let f = &p.py[tfi];
        let Some(a) = py::kwarg_value(f, tr, "args") else {
            continue;
        };
        if a.kind() == "call" {
            if let Some(hit) = s.hf_args.iter().find(|(afi, c)| *afi == tfi && *c == a) {
                return *hit;
            }
        }
        let name = f.text(a);
        let hit = s.hf_args.iter().copied().find(|(afi, c)| {
            *afi == tfi
                && py::statement_of(*c)
                    .and_then(|st| st.named_child(0))
                    .filter(|x| x.kind() == "assignment")
                    .and_then(|x| x.child_by_field_name("left"))
                    .map(|l| f.text(l) == name)
                    .unwrap_or(false)
        });
        if let Some(hit) = hit {
            return hit;
        }
    }
    s.hf_args[0]
}

pub fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

pub enum HfSupport {
    /// Model name.
    Supported(String),
    /// Model class, where it is defined.
    Unsupported(String, String),
    Unknown,
}

/// Does the model given to the Hugging Face Trainer support `gradient_checkpointing_enable()`?
pub fn hf_model_support(p: &Project, s: &Setup) -> HfSupport {
    let Some(&(fi, tr)) = s.hf_trainers.first() else {
        return HfSupport::Unknown;
    };
    let f = &p.py[fi];
    let Some(m) = py::kwarg_value(f, tr, "model").or_else(|| py::positional(tr).into_iter().next())
    else {
        return HfSupport::Unknown;
    };
    // The expression that builds the model.
    let mut expr = m;
    if expr.kind() == "identifier" {
        let name = f.text(expr);
        let scope = py::ancestor(expr, &["function_definition"]).unwrap_or(f.tree.root_node());
        let assign = py::descendants_same_scope(scope)
            .into_iter()
            .filter(|a| a.kind() == "assignment" && a.end_byte() <= expr.start_byte())
            .filter(|a| {
                a.child_by_field_name("left")
                    .map(|l| f.text(l) == name)
                    .unwrap_or(false)
            })
            .filter_map(|a| a.child_by_field_name("right"))
            .next_back();
        match assign {
            Some(r) => expr = r,
            None => return HfSupport::Unknown,
        }
    }
    // Strip `.to(device)` and the like.
    while expr.kind() == "call" {
        let fun = match expr.child_by_field_name("function") {
            Some(x) => x,
            None => break,
        };
        if fun.kind() == "attribute" {
            let attr = fun
                .child_by_field_name("attribute")
                .map(|a| f.text(a))
                .unwrap_or("");
            if matches!(attr, "to" | "cuda" | "train" | "float") {
                if let Some(o) = fun.child_by_field_name("object") {
                    expr = o;
                    continue;
                }
            }
        }
        break;
    }
    if expr.kind() != "call" {
        return HfSupport::Unknown;
    }
    let c = py::callee(f, expr);
    let class = if c.ends_with(".from_pretrained") || c.ends_with(".from_config") {
        c.rsplit_once('.')
            .map(|x| x.0)
            .map(|x| py::last_name(x).to_string())
            .unwrap_or_default()
    } else {
        py::last_name(&c).to_string()
    };
    // A class of the project?
    for g in &p.py {
        for n in g.all_nodes() {
            if n.kind() == "class_definition" && py::def_name(g, n) == class {
                let sup = py::superclasses(g, n);
                let pretrained = sup.iter().any(|x| x.ends_with("PreTrainedModel"));
                let flag = flow_class_flag(g, n);
                if pretrained && flag {
                    return HfSupport::Supported(class);
                }
                return HfSupport::Unsupported(
                    class,
                    format!("{}:{}", g.rel, g.line_of(n.start_byte())),
                );
            }
        }
    }
    if c.ends_with(".from_pretrained") || c.ends_with(".from_config") {
        return HfSupport::Supported(class);
    }
    HfSupport::Unknown
}

fn flow_class_flag(f: &PyFile, class: Node) -> bool {
    let Some(body) = class.child_by_field_name("body") else {
        return false;
    };
    py::named_children(body).into_iter().any(|s| {
        let t: String = f.text(s).split_whitespace().collect();
        t == "supports_gradient_checkpointing=True"
    })
}

fn lightning_rules<'p>(cx: &mut Cx<'p>, s: &Setup<'p>, fi: usize, call: Node<'p>) {
    let p = cx.p;
    let f = &p.py[fi];
    if let Some(prec) = cx.t.precision {
        let v = match prec {
            Precision::Fp32 => "32-true",
            Precision::Tf32 => "32-true",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::Fp16Mixed => "16-mixed",
            Precision::Bf16True => "bf16-true",
            Precision::Fp16True => "16-true",
        };
        cx.set_kwarg(
            fi,
            call,
            "precision",
            &format!("\"{v}\""),
            Knob::Precision,
            Msg::new(M::PlPrecision, &[&v]),
        );
        if prec == Precision::Tf32 {
            cx.note(Knob::Precision, M::PlTf32, &[]);
        }
    }
    cx.eff.old_accum = Some(
        py::kwarg_value(f, call, "accumulate_grad_batches")
            .and_then(|v| flow::resolve(p, fi, v))
            .and_then(|s| s.int())
            .unwrap_or(1),
    );
    if let Some(k) = cx.t.grad_accum {
        cx.set_kwarg(
            fi,
            call,
            "accumulate_grad_batches",
            &k.to_string(),
            Knob::GradAccum,
            Msg::new(M::PlAccum, &[]),
        );
    }
    loader_and_optimizer(cx, s);
}

/// `KEY` of a top-level YAML line `KEY:` opening a block (a comment may follow).
fn yaml_header(line: &str) -> Option<&str> {
    let body = line.split(" #").next()?.trim_end();
    let key = body.strip_suffix(':')?;
    (!key.is_empty() && !key.starts_with([' ', '\t', '#']) && !key.contains(' ')).then_some(key)
}

/// Whether `text` inserted into YAML `src` at `pos` reads back as the scalar `path` = `value`.
fn reads_back(src: &str, pos: usize, text: &str, path: &[&str], value: &str) -> bool {
    let new = format!("{}{text}{}", &src[..pos], &src[pos..]);
    datafile::yaml_scalars(&new)
        .iter()
        .any(|k| k.path == path && k.start >= pos && k.start < pos + text.len() && k.value == value)
}

/// `LightningCLI`: the Trainer and data settings live in its YAML config (`trainer:`, `data:`).
fn lightning_cli_rules<'p>(cx: &mut Cx<'p>, s: &Setup<'p>) {
    let p = cx.p;
    let Some(oi) = p.other.iter().position(|o| {
        o.kind == OtherKind::Yaml
            && (o.src.lines().any(|l| yaml_header(l) == Some("trainer"))
                || datafile::yaml_scalars(&o.src)
                    .iter()
                    .any(|k| k.path.first().map(|x| x == "trainer").unwrap_or(false)))
    }) else {
        cx.note(Knob::Precision, M::PlCliNoConfig, &[]);
        loader_and_optimizer(cx, s);
        return;
    };
    let o = &p.other[oi];
    let rel = o.rel.clone();
    let scalars = datafile::yaml_scalars(&o.src);
    let line = |b: usize| o.src[..b].matches('\n').count() + 1;
    let find = |key: &str| {
        scalars
            .iter()
            .find(|k| k.path.len() == 2 && k.path[0] == "trainer" && k.path[1] == key)
            .cloned()
    };
    // Inserts `key: value` as the last entry of the `trainer:` block (or a new block at the end).
    let insert = |cx: &mut Cx, key: &str, value: &str, knob: Knob, why: Msg| {
        let lines: Vec<&str> = o.src.split_inclusive('\n').collect();
        let mut off = 0;
        let mut at = None;
        // The block's entries are indented like its first line; deeper lines (nested
        // mappings, list items) only move the insertion point past them.
        let mut indent: Option<String> = None;
        let mut in_block = false;
        for l in &lines {
            let t = l.trim_end();
            if yaml_header(t) == Some("trainer") {
                in_block = true;
                at = Some(off + l.len());
            } else if in_block {
                let ind = t.len() - t.trim_start().len();
                if t.trim().is_empty() || t.trim_start().starts_with('#') {
                } else if ind == 0 {
                    in_block = false;
                } else {
                    indent.get_or_insert_with(|| t[..ind].to_string());
                    at = Some(off + l.len());
                }
            }
            off += l.len();
        }
        let indent = indent.unwrap_or_else(|| "  ".into());
        let (pos, text) = match at {
            Some(a) => (a, format!("{indent}{key}: {value}\n")),
            None => {
                let sep = if o.src.ends_with('\n') || o.src.is_empty() {
                    ""
                } else {
                    "\n"
                };
                (o.src.len(), format!("{sep}trainer:\n  {key}: {value}\n"))
            }
        };
        // Read back: the new line must be `trainer.<key>` to the reader that finds it next
        // time (a block holding lines that are not `key: value` may put it elsewhere), with
        // the line break `Cx::finish` adds.
        let eol = if super::edit::needs_line_break(&o.src, pos, &text) {
            "\n"
        } else {
            ""
        };
        if reads_back(
            &o.src,
            pos,
            &format!("{eol}{text}"),
            &["trainer", key],
            value,
        ) {
            cx.edit(&rel, pos, pos, text, knob, Some(why));
        } else {
            cx.note(
                knob,
                M::YamlNotPlaced,
                &[&rel, &format!("trainer.{key}: {value}")],
            );
        }
    };
    if let Some(prec) = cx.t.precision {
        let v = match prec {
            Precision::Fp32 | Precision::Tf32 => "32-true",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::Fp16Mixed => "16-mixed",
            Precision::Bf16True => "bf16-true",
            Precision::Fp16True => "16-true",
        };
        let why = Msg::new(M::PlPrecision, &[&v]);
        match find("precision") {
            Some(k) if k.value.trim_matches(['"', '\'']) != v => {
                cx.edit(&rel, k.start, k.end, v, Knob::Precision, Some(why))
            }
            Some(_) => {}
            None => insert(cx, "precision", v, Knob::Precision, why),
        }
    }
    cx.eff.old_accum = Some(
        find("accumulate_grad_batches")
            .and_then(|k| k.value.parse().ok())
            .unwrap_or(1),
    );
    if let Some(k) = cx.t.grad_accum {
        let why = Msg::new(M::PlAccum, &[]);
        match find("accumulate_grad_batches") {
            Some(site) if site.value != k.to_string() => cx.edit(
                &rel,
                site.start,
                site.end,
                k.to_string(),
                Knob::GradAccum,
                Some(why),
            ),
            Some(_) => {}
            None => insert(
                cx,
                "accumulate_grad_batches",
                &k.to_string(),
                Knob::GradAccum,
                why,
            ),
        }
    }
    // The data module's batch_size from the config overrides its default in code.
    let data_batch = scalars
        .iter()
        .find(|k| k.key() == "batch_size" && k.path.first().map(|x| x == "data").unwrap_or(false))
        .cloned();
    let batch = cx.t.batch;
    if let Some(k) = &data_batch {
        cx.eff.old_batch = k.value.parse().ok();
        if let Some(b) = batch {
            if k.value != b.to_string() {
                let why = Msg::new(
                    M::PlCliKey,
                    &[&k.path.join("."), &format!("{rel}:{}", line(k.start))],
                );
                cx.edit(&rel, k.start, k.end, b.to_string(), Knob::Batch, Some(why));
            }
        }
        cx.t.batch = None;
    }
    loader_and_optimizer(cx, s);
    cx.t.batch = batch;
}

fn accelerate_rules<'p>(cx: &mut Cx<'p>, s: &Setup<'p>, fi: usize, call: Node<'p>) {
    let p = cx.p;
    let f = &p.py[fi];
    if let Some(prec) = cx.t.precision {
        let v = match prec {
            Precision::Bf16Mixed => Some("bf16"),
            Precision::Fp16Mixed => Some("fp16"),
            Precision::Fp32 => Some("no"),
            _ => None,
        };
        match v {
            Some(v) => {
                cx.set_kwarg(
                    fi,
                    call,
                    "mixed_precision",
                    &format!("\"{v}\""),
                    Knob::Precision,
                    Msg::new(M::AccPrecision, &[&v]),
                );
            }
            None => cx.note(Knob::Precision, M::HfTruePrecision, &[&prec.name()]),
        }
    }
    cx.eff.old_accum = Some(
        py::kwarg_value(f, call, "gradient_accumulation_steps")
            .and_then(|v| flow::resolve(p, fi, v))
            .and_then(|s| s.int())
            .unwrap_or(1),
    );
    let uses_ctx = p.py.iter().any(|g| g.src.contains(".accumulate("));
    let manual = if uses_ctx {
        None
    } else {
        manual_accumulation(p)
    };
    if let Some(k) = cx.t.grad_accum {
        match manual {
            // The loop counts micro-batches itself (`if step % N == 0: optimizer.step()`):
            // Accelerator's own setting would do nothing there.
            Some((mfi, n)) => {
                let g = &p.py[mfi];
                match flow::resolve(p, mfi, n) {
                    Some(site) => {
                        cx.eff.old_accum = Some(site.int().unwrap_or(1));
                        cx.set_site(
                            &site,
                            &k.to_string(),
                            Knob::GradAccum,
                            Msg::new(M::LoopAccumExisting, &[]),
                        );
                    }
                    None => {
                        let at = format!("{}:{}", g.rel, g.line_of(n.start_byte()));
                        cx.note(Knob::GradAccum, M::AccManual, &[&at, &g.text(n), &k]);
                    }
                }
            }
            None => {
                cx.set_kwarg(
                    fi,
                    call,
                    "gradient_accumulation_steps",
                    &k.to_string(),
                    Knob::GradAccum,
                    Msg::new(M::AccAccum, &[]),
                );
                if !uses_ctx {
                    cx.note(Knob::GradAccum, M::AccNoContext, &[]);
                }
            }
        }
    }
    if s.pl_trainers.is_empty() {
        loader_and_optimizer(cx, s);
    }
}

/// A loop that accumulates by hand after `accelerator.backward(...)`: the `N` of an
/// `if step % N == 0:` whose block steps the optimizer.
fn manual_accumulation(p: &Project) -> Option<(usize, Node<'_>)> {
    for (fi, f) in p.py.iter().enumerate() {
        if !f.src.contains(".backward(") {
            continue;
        }
        for n in f.all_nodes() {
            if n.kind() != "if_statement" {
                continue;
            }
            let (Some(cond), Some(body)) = (
                n.child_by_field_name("condition"),
                n.child_by_field_name("consequence"),
            ) else {
                continue;
            };
            if !f.text(body).contains(".step(") {
                continue;
            }
            if let Some(right) = py::modulo_divisor(f, cond) {
                return Some((fi, right));
            }
        }
    }
    None
}

fn deepspeed_rules(cx: &mut Cx, _s: &Setup, oi: usize) {
    let o = &cx.p.other[oi];
    let rel = o.rel.clone();
    let Some(scalars) = datafile::json_scalars(&o.src) else {
        return;
    };
    let find = |path: &[&str]| {
        scalars
            .iter()
            .find(|k| k.path.iter().map(String::as_str).eq(path.iter().copied()))
            .cloned()
    };
    let set = |cx: &mut Cx, path: &[&str], value: String, knob: Knob| {
        if let Some(k) = find(path) {
            if k.value.trim_matches('"') == "auto" {
                return;
            }
            if k.value != value {
                cx.edit(
                    &rel,
                    k.start,
                    k.end,
                    value,
                    knob,
                    Some(Msg::new(M::DsKey, &[&path.join("."), &rel])),
                );
            }
        }
    };
    if let Some(b) = cx.t.batch {
        set(
            cx,
            &["train_micro_batch_size_per_gpu"],
            b.to_string(),
            Knob::Batch,
        );
        if find(&["train_batch_size"])
            .map(|k| k.value != "\"auto\"")
            .unwrap_or(false)
        {
            cx.note(Knob::Batch, M::DsTrainBatch, &[&rel]);
        }
    }
    if let Some(k) = cx.t.grad_accum {
        set(
            cx,
            &["gradient_accumulation_steps"],
            k.to_string(),
            Knob::GradAccum,
        );
    }
    if let Some(prec) = cx.t.precision {
        let (on, off) = match prec {
            Precision::Bf16Mixed | Precision::Bf16True => ("bf16", "fp16"),
            Precision::Fp16Mixed | Precision::Fp16True => ("fp16", "bf16"),
            _ => ("", ""),
        };
        if !on.is_empty() {
            set(cx, &[on, "enabled"], "true".into(), Knob::Precision);
            set(cx, &[off, "enabled"], "false".into(), Knob::Precision);
        }
    }
}

/// Batch size, DataLoader settings and optimizer for set-ups that build their own DataLoader
/// and optimizer (Lightning, accelerate, plain loops).
pub fn loader_and_optimizer<'p>(cx: &mut Cx<'p>, s: &Setup<'p>) {
    let p = cx.p;
    if let Some((dfi, dl)) = train_dataloader(p, s) {
        let df = &p.py[dfi];
        let b_expr = py::kwarg_value(df, dl, "batch_size");
        if cx.eff.old_batch.is_none() {
            cx.eff.old_batch = Some(
                b_expr
                    .and_then(|v| flow::resolve(p, dfi, v))
                    .and_then(|s| s.int())
                    .unwrap_or(1),
            );
        }
        if let Some(b) = cx.t.batch {
            let why = Msg::new(M::DlBatch, &[&loc(df, dl)]);
            cx.set_kwarg(dfi, dl, "batch_size", &b.to_string(), Knob::Batch, why);
        }
        dataloader_opts(cx, dfi, dl, None, None);
    } else if let (Some(b), Some((site, at))) = (cx.t.batch, batch_setting(p)) {
        if cx.eff.old_batch.is_none() {
            cx.eff.old_batch = Some(site.int().unwrap_or(1));
        }
        let why = Msg::new(M::BatchSetting, &[&at]);
        cx.set_site(&site, &b.to_string(), Knob::Batch, why);
        if !cx.t.dataloader.is_empty() {
            cx.note(Knob::Dataloader, M::NoDataLoaderOpts, &[]);
        }
    } else if cx.t.batch.is_some() || !cx.t.dataloader.is_empty() {
        cx.note(Knob::Batch, M::NoDataLoader, &[]);
    }
    if let Some(&(ofi, oc)) = train_optimizer(p, s) {
        if cx.eff.lr.is_none() {
            let of = &p.py[ofi];
            cx.eff.lr = py::kwarg_value(of, oc, "lr")
                .or_else(|| py::positional(oc).into_iter().nth(1))
                .and_then(|v| flow::resolve(p, ofi, v));
        }
        if let Some(o) = cx.t.optimizer {
            optimizer_rewrite(cx, ofi, oc, o, None);
        }
    } else if cx.t.optimizer.is_some() {
        cx.note(Knob::Optimizer, M::NoOptimizer, &[]);
    }
}

/// Without a DataLoader (batches cut by hand, as nanoGPT's `get_batch` does): the one literal
/// that every read of a `batch_size` setting (`args.batch_size`, `self.cfg.batch_size`, ...)
/// leads to, with where the first read is. None when there is no such read, one cannot be
/// followed, or they lead to different places.
fn batch_setting(p: &Project) -> Option<(flow::Site, String)> {
    let mut found: Option<(flow::Site, String)> = None;
    for (fi, f) in p.py.iter().enumerate() {
        for n in f.all_nodes() {
            if n.kind() != "attribute"
                || n.child_by_field_name("attribute").map(|a| f.text(a)) != Some("batch_size")
            {
                continue;
            }
            // Not a write (`self.batch_size = batch_size`).
            let written = n.parent().is_some_and(|a| {
                a.kind() == "assignment" && a.child_by_field_name("left") == Some(n)
            });
            if written {
                continue;
            }
            let site = flow::resolve(p, fi, n)?;
            match &found {
                None => found = Some((site, format!("{}:{}", f.rel, f.line_of(n.start_byte())))),
                Some((s, _)) if s.file == site.file && s.start == site.start => {}
                Some(_) => return None,
            }
        }
    }
    found
}

/// The DataLoader that feeds training.
pub fn train_dataloader<'p>(p: &'p Project, s: &Setup<'p>) -> Option<At<'p>> {
    let in_method = |name: &str| {
        s.dataloaders.iter().copied().find(|(fi, d)| {
            py::ancestor(*d, &["function_definition"])
                .map(|m| py::def_name(&p.py[*fi], m) == name)
                .unwrap_or(false)
        })
    };
    if let Some(d) = in_method("train_dataloader").or_else(|| in_method("get_train_dataloader")) {
        return Some(d);
    }
    // The loader iterated by the loop that calls backward().
    for &(bfi, b) in &s.backwards {
        let f = &p.py[bfi];
        let mut cur = py::ancestor(b, &["for_statement"]);
        while let Some(fs) = cur {
            if let Some(right) = fs.child_by_field_name("right") {
                let mut it = right;
                if it.kind() == "call" && py::callee(f, it) == "enumerate" {
                    if let Some(a) = py::positional(it).into_iter().next() {
                        it = a;
                    }
                }
                let name = f.text(it).to_string();
                if let Some(d) = s.dataloaders.iter().copied().find(|(dfi, d)| {
                    *dfi == bfi
                        && py::statement_of(*d)
                            .and_then(|st| st.named_child(0))
                            .filter(|a| a.kind() == "assignment")
                            .and_then(|a| a.child_by_field_name("left"))
                            .map(|l| f.text(l) == name)
                            .unwrap_or(false)
                }) {
                    return Some(d);
                }
            }
            cur = py::ancestor(fs, &["for_statement"]);
        }
    }
    // One that names training in what it is assigned to or reads, but not in the settings fix
    // writes: those change with a first run, and a second run must pick the same loader.
    let trainish = s.dataloaders.iter().copied().find(|(fi, d)| {
        let f = &p.py[*fi];
        let target = py::statement_of(*d)
            .and_then(|st| st.named_child(0))
            .filter(|a| a.kind() == "assignment")
            .and_then(|a| a.child_by_field_name("left"))
            .map(|l| f.text(l));
        let args = d
            .child_by_field_name("arguments")
            .map(py::named_children)
            .unwrap_or_default();
        let read = args.into_iter().filter(|a| {
            a.kind() != "keyword_argument"
                || !a.child_by_field_name("name").is_some_and(|n| {
                    [
                        "batch_size",
                        "num_workers",
                        "pin_memory",
                        "persistent_workers",
                    ]
                    .contains(&f.text(n))
                })
        });
        target
            .into_iter()
            .chain(read.map(|a| f.text(a)))
            .any(|t| t.to_ascii_lowercase().contains("train"))
    });
    trainish.or_else(|| (s.dataloaders.len() == 1).then(|| s.dataloaders[0]))
}

fn train_optimizer<'a, 'p>(p: &'p Project, s: &'a Setup<'p>) -> Option<&'a At<'p>> {
    s.optimizers
        .iter()
        .find(|(fi, o)| {
            py::ancestor(*o, &["function_definition"])
                .map(|m| py::def_name(&p.py[*fi], m) == "configure_optimizers")
                .unwrap_or(false)
        })
        .or_else(|| s.optimizers.first())
}

/// Sets num_workers / pin_memory / persistent_workers on a DataLoader call.
pub fn dataloader_opts<'p>(
    cx: &mut Cx<'p>,
    fi: usize,
    call: Node<'p>,
    ctx: Option<&str>,
    hf: Option<HfArgs<'p>>,
) {
    let dl = cx.t.dataloader.clone();
    let p = cx.p;
    let f = &p.py[fi];
    let at = loc(f, call);
    let why = |name: &str| match ctx {
        Some(c) => Msg::new(M::DlOptOwn, &[&name, &c]),
        None => Msg::new(M::DlOpt, &[&name, &at]),
    };
    // A subclass DataLoader reading `self.args.dataloader_*` keeps TrainingArguments live.
    let set = |cx: &mut Cx<'p>, name: &str, value: &str| {
        let reads_args = py::kwarg_value(f, call, name)
            .map(|v| f.text(v).starts_with("self.args."))
            .unwrap_or(false);
        match hf {
            Some(args) if reads_args => {
                let field = format!("dataloader_{name}");
                args.set(
                    cx,
                    &field,
                    value,
                    Knob::Dataloader,
                    Msg::new(M::HfDl, &[&field]),
                );
            }
            _ => {
                cx.set_kwarg(fi, call, name, value, Knob::Dataloader, why(name));
            }
        }
    };
    let mut workers = py::kwarg_value(f, call, "num_workers")
        .and_then(|v| flow::resolve(p, fi, v))
        .and_then(|s| s.int())
        .unwrap_or(0);
    if let Some(n) = dl.num_workers {
        set(cx, "num_workers", &n.to_string());
        workers = n;
    }
    if let Some(b) = dl.pin_memory {
        set(cx, "pin_memory", py_bool(b));
    }
    if let Some(b) = dl.persistent_workers {
        if b && workers == 0 {
            cx.note(Knob::Dataloader, M::PersistentNoWorkers, &[&at]);
        } else {
            set(cx, "persistent_workers", py_bool(b));
        }
    }
}

/// Swaps the optimizer constructor `call` for the target optimizer, keeping its arguments
/// where they mean the same and dropping those the new class does not take.
pub fn optimizer_rewrite(cx: &mut Cx, fi: usize, call: Node, target: Optimizer, own: Option<&str>) {
    let p = cx.p;
    let f = &p.py[fi];
    let c = py::callee(f, call);
    let old = py::last_name(&c).to_string();
    let fun = match call.child_by_field_name("function") {
        Some(x) => x,
        None => return,
    };
    let prefix = c.strip_suffix(old.as_str()).unwrap_or("").to_string();
    let torch_prefix = if prefix.is_empty() || prefix.starts_with("bnb") {
        "torch.optim.".to_string()
    } else {
        prefix.clone()
    };
    let (new_callee, import, adam_like) = match target {
        Optimizer::Adamw | Optimizer::AdamwFused => (format!("{torch_prefix}AdamW"), None, true),
        Optimizer::Adam => (format!("{torch_prefix}Adam"), None, true),
        Optimizer::Sgd | Optimizer::SgdMomentum => (format!("{torch_prefix}SGD"), None, false),
        Optimizer::Adafactor => (
            "Adafactor".to_string(),
            Some("from transformers.optimization import Adafactor"),
            false,
        ),
        Optimizer::Adamw8bit => (
            "bnb.optim.AdamW8bit".to_string(),
            Some("import bitsandbytes as bnb"),
            true,
        ),
    };
    let rel = f.rel.clone();
    let why = match own {
        Some(ctx) => Msg::new(M::OptOwn, &[&old, &new_callee, &ctx]),
        None => Msg::new(M::OptSwap, &[&old, &new_callee]),
    };
    let same_class = py::last_name(&new_callee) == old;
    if !same_class {
        cx.edit(
            &rel,
            fun.start_byte(),
            fun.end_byte(),
            new_callee.clone(),
            Knob::Optimizer,
            Some(why.clone()),
        );
    }
    let old_adam = old.starts_with("Adam");
    if let Some(imp) = import {
        cx.ensure_import(fi, imp, Knob::Optimizer);
    }
    // Arguments the new class does not take.
    let drop: &[&str] = match target {
        Optimizer::Sgd | Optimizer::SgdMomentum => {
            &["betas", "eps", "amsgrad", "fused", "foreach", "capturable"]
        }
        Optimizer::Adafactor => &[
            "betas",
            "eps",
            "amsgrad",
            "fused",
            "foreach",
            "momentum",
            "nesterov",
            "capturable",
        ],
        Optimizer::Adamw8bit => &["fused", "foreach", "capturable", "momentum", "nesterov"],
        _ => &["momentum", "nesterov", "dampening"],
    };
    let mut dropped = Vec::new();
    let mut remove = Vec::new();
    for name in drop {
        if let Some(kw) = py::kwarg(f, call, name) {
            remove.push(kw);
            dropped.push(name.to_string());
        }
    }
    cx.remove_args(fi, call, &remove, Knob::Optimizer);
    let mut added = Vec::new();
    // Adam -> AdamW: AdamW's default weight_decay is 0.01, Adam's 0; keep it at 0.
    if old == "Adam"
        && matches!(
            target,
            Optimizer::Adamw | Optimizer::AdamwFused | Optimizer::Adamw8bit
        )
        && py::kwarg(f, call, "weight_decay").is_none()
    {
        added.push("weight_decay=0.0".to_string());
    }
    if target == Optimizer::AdamwFused && py::kwarg(f, call, "fused").is_none() {
        added.push("fused=True".to_string());
    }
    if target == Optimizer::SgdMomentum && py::kwarg(f, call, "momentum").is_none() {
        // 0.9: the usual SGD momentum (torchvision's reference training recipes).
        added.push("momentum=0.9".to_string());
    }
    if target == Optimizer::Adafactor {
        for kw in [
            "scale_parameter=False",
            "relative_step=False",
            "warmup_init=False",
        ] {
            let name = kw.split('=').next().unwrap_or("");
            if py::kwarg(f, call, name).is_none() {
                added.push(kw.to_string());
            }
        }
    }
    for a in &added {
        // The same class with other arguments (AdamW -> fused AdamW): say what it gets.
        let w = same_class.then(|| match own {
            Some(ctx) => Msg::new(M::OptOwnArgs, &[&old, a, &ctx]),
            None => Msg::new(M::OptArgs, &[&old, a]),
        });
        cx.insert_kwarg_skipping(fi, call, a, Knob::Optimizer, w, &remove);
    }
    if dropped.is_empty() && old_adam != adam_like {
        cx.note(
            Knob::Optimizer,
            M::OptRetuneFamily,
            &[&format!("{rel}:{}", f.line_of(call.start_byte()))],
        );
    } else if !dropped.is_empty() {
        cx.note(
            Knob::Optimizer,
            M::OptRetune,
            &[
                &format!("{rel}:{}", f.line_of(call.start_byte())),
                &dropped.join(", "),
            ],
        );
    }
    if target == Optimizer::Adamw8bit {
        cx.note(Knob::Optimizer, M::NeedsBnb, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_block_headers() {
        assert_eq!(yaml_header("trainer:"), Some("trainer"));
        assert_eq!(
            yaml_header("trainer:  # Lightning settings"),
            Some("trainer")
        );
        assert_eq!(yaml_header("  trainer:"), None);
        assert_eq!(yaml_header("trainer: 3"), None);
        assert_eq!(yaml_header("# trainer:"), None);
    }

    #[test]
    fn insertions_are_read_back() {
        let src = "trainer:\n  max_epochs: 3\n  callbacks:\n    - class_path: X\n";
        let end = src.len();
        let path = ["trainer", "precision"];
        assert!(reads_back(
            src,
            end,
            "  precision: bf16-mixed\n",
            &path,
            "bf16-mixed"
        ));
        // Indented like the list item's mapping, the key is not trainer's.
        // Indented like the list item's mapping, the key is not trainer's.
        assert!(!reads_back(
            src,
            end,
            "      precision: bf16-mixed\n",
            &path,
            "bf16-mixed"
        ));
        let nested = "trainer:\n  max_epochs: 3\n  logger:\n";
        assert!(!reads_back(
            nested,
            nested.len(),
            "    precision: bf16-mixed\n",
            &path,
            "bf16-mixed"
        ));
        assert!(reads_back(
            nested,
            nested.len(),
            "  precision: bf16-mixed\n",
            &path,
            "bf16-mixed"
        ));
    }
}
