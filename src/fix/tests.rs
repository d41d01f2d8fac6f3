//! Rule tests on small inline projects (the fixture projects are tested through the binary).
use std::fs;

use super::*;
use crate::knobs::{Attention, Checkpointing, Optimizer, Precision};

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, src) in files {
        let p = d.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, src).unwrap();
    }
    d
}

fn new_text<'a>(p: &'a Patch, file: &str) -> &'a str {
    &p.files
        .iter()
        .find(|f| f.path == file)
        .unwrap_or_else(|| {
            panic!(
                "{file} not changed: {:?}",
                p.files.iter().map(|f| &f.path).collect::<Vec<_>>()
            )
        })
        .new
}

fn has_note(p: &Patch, id: M) -> bool {
    p.notes.iter().any(|n| n.msg.id == id)
}

const HF: &str = r#"from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

model = AutoModelForCausalLM.from_pretrained("gpt2")
args = TrainingArguments(
    output_dir="out",
    per_device_train_batch_size=16,
    learning_rate=5e-5,
)
trainer = Trainer(model=model, args=args, train_dataset=ds)
trainer.train()
"#;

#[test]
fn hf_plain_trainer_uses_training_arguments() {
    let d = project(&[("train.py", HF)]);
    let t = Target {
        batch: Some(4),
        grad_accum: Some(4),
        checkpointing: Some(Checkpointing::Full),
        optimizer: Some(Optimizer::AdamwFused),
        attention: Some(Attention::Sdpa),
        dataloader: DataLoaderOpts {
            num_workers: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(s.contains("per_device_train_batch_size=4,"), "{s}");
    assert!(s.contains("    gradient_accumulation_steps=4,\n"), "{s}");
    assert!(s.contains("    gradient_checkpointing=True,\n"), "{s}");
    assert!(s.contains("optim=\"adamw_torch_fused\""), "{s}");
    assert!(s.contains("dataloader_num_workers=2"), "{s}");
    assert!(
        s.contains("from_pretrained(\"gpt2\", attn_implementation=\"sdpa\")"),
        "{s}"
    );
    assert!(py::parse(s).is_ok());
    // 16 x 1 -> 4 x 4: same effective batch.
    assert!(has_note(&p, M::LrSame));
}

#[test]
fn hf_effective_batch_change_gives_learning_rate_rule() {
    let d = project(&[("train.py", HF)]);
    let t = Target {
        batch: Some(8),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let n = p.notes.iter().find(|n| n.msg.id == M::LrScale).unwrap();
    assert_eq!(n.msg.args[0], "16");
    assert_eq!(n.msg.args[1], "8");
    assert_eq!(n.msg.args[4], "2.500e-5");
}

#[test]
fn accelerate_and_deepspeed() {
    let d = project(&[
        (
            "train.py",
            "from accelerate import Accelerator\nimport torch\n\naccelerator = Accelerator(mixed_precision=\"no\")\nloader = torch.utils.data.DataLoader(ds, batch_size=32)\nopt = torch.optim.AdamW(model.parameters(), lr=1e-3)\nmodel, opt, loader = accelerator.prepare(model, opt, loader)\nfor batch in loader:\n    loss = model(batch)\n    accelerator.backward(loss)\n    opt.step()\n    opt.zero_grad()\n",
        ),
        (
            "ds_config.json",
            "{\n  \"train_micro_batch_size_per_gpu\": 32,\n  \"gradient_accumulation_steps\": \"auto\",\n  \"bf16\": {\"enabled\": false},\n  \"zero_optimization\": {\"stage\": 2}\n}\n",
        ),
    ]);
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        batch: Some(8),
        grad_accum: Some(4),
        bf16_supported: Some(true),
        gpu: Some("A100".into()),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("Accelerator(mixed_precision=\"bf16\", gradient_accumulation_steps=4)"),
        "{s}"
    );
    assert!(s.contains("DataLoader(ds, batch_size=8)"), "{s}");
    assert!(has_note(&p, M::AccNoContext));
    let j = new_text(&p, "ds_config.json");
    assert!(j.contains("\"train_micro_batch_size_per_gpu\": 8"), "{j}");
    assert!(
        j.contains("\"gradient_accumulation_steps\": \"auto\""),
        "{j}"
    );
    assert!(j.contains("\"bf16\": {\"enabled\": true}"), "{j}");
    serde_json::from_str::<serde_json::Value>(j).unwrap();
    assert!(p.frameworks.contains(&Framework::Deepspeed));
}

#[test]
fn toml_config_and_dataclass_defaults() {
    let d = project(&[
        (
            "train.py",
            "import tomllib\nimport torch\ncfg = tomllib.load(open(\"conf/train.toml\", \"rb\"))\nloader = torch.utils.data.DataLoader(ds, batch_size=cfg[\"train\"][\"batch_size\"])\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\nfor x in loader:\n    loss = model(x)\n    loss.backward()\n    opt.step()\n",
        ),
        ("conf/train.toml", "[train]\nbatch_size = 64 # per GPU\n"),
    ]);
    let t = Target {
        batch: Some(16),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    assert_eq!(
        new_text(&p, "conf/train.toml"),
        "[train]\nbatch_size = 16 # per GPU\n"
    );

    let d = project(&[
        ("config.py", "from dataclasses import dataclass\n\n\n@dataclass\nclass Cfg:\n    batch_size: int = 32\n    workers: int = 4\n"),
        (
            "train.py",
            "import torch\nfrom config import Cfg\n\ncfg = Cfg()\nloader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers)\nopt = torch.optim.Adam(model.parameters())\nfor x in loader:\n    loss = model(x)\n    loss.backward()\n    opt.step()\n",
        ),
    ]);
    let t = Target {
        batch: Some(8),
        dataloader: DataLoaderOpts {
            num_workers: Some(2),
            pin_memory: Some(true),
            persistent_workers: None,
        },
        optimizer: Some(Optimizer::Adamw),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let c = new_text(&p, "config.py");
    assert!(
        c.contains("batch_size: int = 8\n") && c.contains("workers: int = 2\n"),
        "{c}"
    );
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("num_workers=cfg.workers, pin_memory=True)"),
        "{s}"
    );
    assert!(
        s.contains("torch.optim.AdamW(model.parameters(), weight_decay=0.0)"),
        "{s}"
    );
}

#[test]
fn existing_accumulation_and_autocast_are_edited_in_place() {
    let src = "import torch\n\nACCUM = 2\n\n\ndef train(model, loader, opt):\n    for i, (x, y) in enumerate(loader):\n        with torch.autocast(\"cuda\", dtype=torch.float16):\n            loss = model(x, y)\n        (loss / ACCUM).backward()\n        if (i + 1) % ACCUM == 0:\n            opt.step()\n            opt.zero_grad()\n";
    let d = project(&[("train.py", src)]);
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        grad_accum: Some(8),
        bf16_supported: Some(true),
        gpu: Some("H100".into()),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    // `(loss / ACCUM).backward()` has no plain `loss` object: the loop shape note, no broken edit.
    for f in &p.files {
        assert!(py::parse(&f.new).is_ok());
    }
    let src2 = src.replace(
        "(loss / ACCUM).backward()",
        "loss = loss / ACCUM\n        loss.backward()",
    );
    let d = project(&[("train.py", &src2)]);
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(s.contains("ACCUM = 8\n"), "{s}");
    assert!(
        s.contains("torch.autocast(\"cuda\", dtype=torch.bfloat16)"),
        "{s}"
    );
    assert!(!s.contains("grad_accum_steps"), "{s}");
}

#[test]
fn attention_weights_returned_are_not_rewritten() {
    let d = project(&[(
        "model.py",
        "import torch\nfrom torch import nn\n\n\nclass A(nn.Module):\n    def forward(self, q, k, v):\n        attn = (q @ k.transpose(-2, -1)) * self.scale\n        attn = attn.softmax(dim=-1)\n        return attn @ v, attn\n",
    ), ("train.py", "for x in dl:\n    loss = m(x)\n    loss.backward()\n    opt.step()\n")]);
    let t = Target {
        attention: Some(Attention::Sdpa),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    assert!(p.files.is_empty());
    assert!(has_note(&p, M::AttnWeightsUsed));
}

#[test]
fn nothing_requested_or_nothing_found() {
    let d = project(&[("train.py", "print(1)\n")]);
    assert!(analyze(d.path(), &Target::default()).is_err());
    let t = Target {
        batch: Some(2),
        ..Default::default()
    };
    let e = analyze(d.path(), &t).unwrap_err().to_string();
    assert!(e.contains("no training code found in 1 Python file"), "{e}");
}

#[test]
fn apply_refuses_a_file_changed_since_read() {
    let d = project(&[("train.py", HF)]);
    let t = Target {
        batch: Some(4),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    fs::write(d.path().join("train.py"), format!("{HF}# edited\n")).unwrap();
    let e = apply::apply(d.path(), &p, true).unwrap_err().to_string();
    assert!(e.contains("changed since it was read"), "{e}");
    assert!(!d.path().join("train.py.orig").exists());
    // Unchanged: written, with a backup.
    fs::write(d.path().join("train.py"), HF).unwrap();
    let a = apply::apply(d.path(), &p, true).unwrap();
    assert_eq!(a.written[0].backup, "train.py.orig");
    assert_eq!(
        fs::read_to_string(d.path().join("train.py.orig")).unwrap(),
        HF
    );
}

#[test]
fn target_from_plan_keeps_only_changes() {
    let base = crate::knobs::Knobs {
        batch: 16,
        grad_accum: 1,
        precision: Precision::Fp32,
        checkpointing: Checkpointing::None,
        checkpoint_modules: vec![],
        attention: Attention::Eager,
        optimizer: Optimizer::Adamw,
        gpus: 1,
        sharding: crate::knobs::Sharding::None,
        lora_rank: None,
        lora_targets: vec![],
    };
    let mut chosen = base.clone();
    chosen.precision = Precision::Bf16Mixed;
    chosen.attention = Attention::Sdpa;
    let t = Target::from_plan(&chosen, &base);
    assert_eq!(t.precision, Some(Precision::Bf16Mixed));
    assert_eq!(t.attention, Some(Attention::Sdpa));
    assert_eq!(t.batch, None);
    assert_eq!(t.optimizer, None);
    assert_eq!(t.checkpointing, None);
}

#[test]
fn hf_model_in_a_plain_loop_enables_its_own_checkpointing() {
    let d = project(&[(
        "train.py",
        "import torch\nfrom transformers import AutoModelForCausalLM\n\n\ndef main():\n    model = AutoModelForCausalLM.from_pretrained(\"gpt2\")\n    opt = torch.optim.AdamW(model.parameters())\n    for batch in loader:\n        loss = model(**batch).loss\n        loss.backward()\n        opt.step()\n",
    )]);
    let t = Target {
        checkpointing: Some(Checkpointing::Full),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(s.contains("from_pretrained(\"gpt2\")\n    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={\"use_reentrant\": False})\n"), "{s}");
    assert!(!has_note(&p, M::CkptNoLoops));
}

#[test]
fn forward_range_keeps_model_call_with_device_move() {
    let d = project(&[(
        "train.py",
        "import torch\n\nopt = torch.optim.SGD(net.parameters(), lr=0.1)\nfor x, y in loader:\n    opt.zero_grad()\n    out = net(x.to(dev))\n    loss = crit(out, y.to(dev))\n    loss.backward()\n    opt.step()\n",
    ), ("README.md", "# Project\n")]);
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        alloc_conf: Some("expandable_segments:True".into()),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(s.contains("    opt.zero_grad()\n    with torch.autocast(device_type=\"cuda\", dtype=torch.bfloat16):\n        out = net(x.to(dev))\n        loss = crit(out, y.to(dev))\n    loss.backward()\n"), "{s}");
    let r = new_text(&p, "README.md");
    assert!(
        r.contains("export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"),
        "{r}"
    );
}

#[test]
fn inserted_keyword_next_to_a_splat_is_noted() {
    let d = project(&[(
        "train.py",
        "from transformers import Trainer, TrainingArguments\nargs = TrainingArguments(**cfg)\nTrainer(model=m, args=args).train()\n",
    )]);
    let t = Target {
        grad_accum: Some(2),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    assert!(new_text(&p, "train.py")
        .contains("TrainingArguments(**cfg, gradient_accumulation_steps=2)"));
    assert!(has_note(&p, M::SplatKwargs));
}

#[test]
fn hf_argument_parser_flags_in_the_launch_script() {
    let d = project(&[
        (
            "run_clm.py",
            "from transformers import AutoModelForCausalLM, HfArgumentParser, Trainer, TrainingArguments\n\nparser = HfArgumentParser((ModelArguments, TrainingArguments))\nmodel_args, training_args = parser.parse_args_into_dataclasses()\nmodel = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)\ntrainer = Trainer(model=model, args=training_args, train_dataset=ds)\ntrainer.train()\n",
        ),
        (
            "train.sh",
            "#!/bin/bash\ntorchrun --nproc_per_node 8 run_clm.py \\\n    --model_name_or_path gpt2 \\\n    --per_device_train_batch_size 16 \\\n    --fp16 \\\n    --output_dir out \"$@\"\n",
        ),
    ]);
    let t = Target {
        batch: Some(4),
        grad_accum: Some(4),
        precision: Some(Precision::Bf16Mixed),
        checkpointing: Some(Checkpointing::Full),
        bf16_supported: Some(true),
        gpu: Some("A100".into()),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.sh");
    assert_eq!(
        s,
        "#!/bin/bash\ntorchrun --nproc_per_node 8 run_clm.py \\\n    --model_name_or_path gpt2 \\\n    --per_device_train_batch_size 4 \\\n    --fp16 False \\\n    --output_dir out \\\n    --gradient_accumulation_steps 4 \\\n    --bf16 True \\\n    --gradient_checkpointing True \"$@\"\n"
    );
    assert!(p.frameworks.contains(&Framework::HfTrainer));
}

/// The command's last word is a bare `--fp16`: its value and the appended flags both go at the
/// end of the command, the value first.
#[test]
fn hf_launch_script_ending_in_a_bare_flag() {
    let run_clm = "from transformers import AutoModelForCausalLM, HfArgumentParser, Trainer, TrainingArguments\n\nparser = HfArgumentParser((ModelArguments, TrainingArguments))\nmodel_args, training_args = parser.parse_args_into_dataclasses()\nmodel = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)\ntrainer = Trainer(model=model, args=training_args, train_dataset=ds)\ntrainer.train()\n";
    let d = project(&[
        ("run_clm.py", run_clm),
        (
            "train.sh",
            "#!/bin/bash\ntorchrun --nproc_per_node 8 run_clm.py \\\n    --output_dir out \\\n    --fp16\n",
        ),
    ]);
    let t = Target {
        grad_accum: Some(2),
        precision: Some(Precision::Bf16Mixed),
        bf16_supported: Some(true),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    assert_eq!(
        new_text(&p, "train.sh"),
        "#!/bin/bash\ntorchrun --nproc_per_node 8 run_clm.py \\\n    --output_dir out \\\n    --fp16 False \\\n    --gradient_accumulation_steps 2 \\\n    --bf16 True\n"
    );
    second_run_changes_nothing(&d, &p, &t);
}

#[test]
fn hf_argument_parser_json_file() {
    let d = project(&[
        (
            "train.py",
            "import sys\nfrom transformers import HfArgumentParser, Trainer, TrainingArguments\n\n(training_args,) = HfArgumentParser(TrainingArguments).parse_json_file(sys.argv[1])\nTrainer(model=m, args=training_args).train()\n",
        ),
        ("args.json", "{\n    \"output_dir\": \"out\",\n    \"per_device_train_batch_size\": 16\n}\n"),
    ]);
    let t = Target {
        batch: Some(8),
        precision: Some(Precision::Fp16Mixed),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let j = new_text(&p, "args.json");
    assert_eq!(j, "{\n    \"output_dir\": \"out\",\n    \"per_device_train_batch_size\": 8,\n    \"fp16\": true\n}\n");
}

#[test]
fn subclass_loader_reading_self_args_keeps_training_arguments_live() {
    let d = project(&[(
        "train.py",
        "from torch.utils.data import DataLoader\nfrom transformers import Trainer, TrainingArguments\n\n\nclass MyTrainer(Trainer):\n    def get_train_dataloader(self):\n        return DataLoader(self.train_dataset, batch_size=self.args.per_device_train_batch_size, num_workers=self.args.dataloader_num_workers, pin_memory=True)\n\n\nargs = TrainingArguments(output_dir=\"o\", per_device_train_batch_size=32, dataloader_num_workers=2)\nMyTrainer(model=m, args=args).train()\n",
    )]);
    let t = Target {
        batch: Some(8),
        dataloader: DataLoaderOpts {
            num_workers: Some(6),
            pin_memory: Some(false),
            persistent_workers: None,
        },
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("per_device_train_batch_size=8, dataloader_num_workers=6)"),
        "{s}"
    );
    assert!(s.contains("pin_memory=False)"), "{s}");
    assert!(!s.contains("dataloader_pin_memory"), "{s}");
}

#[test]
fn optimizer_swap_drops_arguments_the_new_class_does_not_take() {
    let d = project(&[(
        "train.py",
        "import torch\n\nopt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8)\nopt2 = torch.optim.Adam(\n    model.parameters(),\n    lr=1e-3,\n    betas=(0.9, 0.99),  # tuned\n    eps=1e-8,\n)\nfor x in loader:\n    loss = model(x)\n    loss.backward()\n    opt.step()\n",
    )]);
    let t = Target {
        optimizer: Some(Optimizer::Sgd),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    // Only the training optimizer (the first) changes.
    assert!(
        s.contains("opt = torch.optim.SGD(model.parameters(), lr=1e-3)\n"),
        "{s}"
    );
    assert!(s.contains("opt2 = torch.optim.Adam(\n"), "{s}");
    assert!(has_note(&p, M::OptRetune));
    // The multi-line form.
    let d = project(&[(
        "train.py",
        "import torch\n\nopt = torch.optim.Adam(\n    model.parameters(),\n    lr=1e-3,\n    betas=(0.9, 0.99),  # tuned\n    eps=1e-8,\n)\nfor x in loader:\n    loss = model(x)\n    loss.backward()\n    opt.step()\n",
    )]);
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("opt = torch.optim.SGD(\n    model.parameters(),\n    lr=1e-3,\n)\n"),
        "{s}"
    );
}

#[test]
fn lightning_cli_yaml_config() {
    let d = project(&[
        (
            "main.py",
            "import torch\nfrom lightning.pytorch.cli import LightningCLI\nfrom torch.utils.data import DataLoader\nimport lightning as L\n\n\nclass DM(L.LightningDataModule):\n    def __init__(self, batch_size: int = 32):\n        super().__init__()\n        self.batch_size = batch_size\n\n    def train_dataloader(self):\n        return DataLoader(ds, batch_size=self.batch_size)\n\n\nif __name__ == \"__main__\":\n    LightningCLI(Model, DM)\n",
        ),
        ("config.yaml", "trainer:\n  max_epochs: 3\n  devices: 1\ndata:\n  batch_size: 64\n"),
    ]);
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        grad_accum: Some(2),
        batch: Some(32),
        bf16_supported: Some(true),
        gpu: Some("A100".into()),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    assert_eq!(
        new_text(&p, "config.yaml"),
        "trainer:\n  max_epochs: 3\n  devices: 1\n  precision: bf16-mixed\n  accumulate_grad_batches: 2\ndata:\n  batch_size: 32\n"
    );
    assert!(
        p.files.iter().all(|f| f.path != "main.py"),
        "the code default is overridden by the config"
    );
    assert!(has_note(&p, M::LrSame));
}

/// Writes the patch's new texts into the project directory (what `--apply` does, minus the
/// safety checks tested in `apply`).
fn write_patch(d: &tempfile::TempDir, p: &Patch) {
    for f in &p.files {
        fs::write(d.path().join(&f.path), &f.new).unwrap();
    }
}

/// Applies the patch, runs fix again with the same target: nothing may be left to change.
fn second_run_changes_nothing(d: &tempfile::TempDir, p: &Patch, t: &Target) {
    write_patch(d, p);
    let again = analyze(d.path(), t).unwrap();
    assert!(again.files.is_empty(), "{}", again.unified_diff());
}

const LOOP: &str = "import torch\n\nopt = torch.optim.SGD(net.parameters(), lr=0.1)\nfor x in loader:\n    loss = net(x)\n    loss.backward()\n    opt.step()\n";

fn alloc_target(conf: &str) -> Target {
    Target {
        alloc_conf: Some(conf.into()),
        ..Default::default()
    }
}

#[test]
fn alloc_conf_in_the_entry_script_is_set_once() {
    let d = project(&[("train.py", LOOP)]);
    let t = alloc_target("expandable_segments:True");
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(s.starts_with("import os\n\nos.environ.setdefault(\"PYTORCH_CUDA_ALLOC_CONF\", \"expandable_segments:True\")"), "{s}");
    second_run_changes_nothing(&d, &p, &t);
    // Another value later replaces the one written, in place.
    let p = analyze(d.path(), &alloc_target("max_split_size_mb:128")).unwrap();
    let s2 = new_text(&p, "train.py");
    assert_eq!(
        s2,
        s.replace("expandable_segments:True", "max_split_size_mb:128")
    );
    assert!(explains(&p, M::AllocExisting));
}

/// Whether a hunk of the patch carries this explanation.
fn explains(p: &Patch, id: M) -> bool {
    p.files
        .iter()
        .flat_map(|f| &f.hunks)
        .flat_map(|h| &h.changes)
        .any(|c| c.why.id == id)
}

#[test]
fn alloc_conf_set_by_the_user_is_updated_or_left() {
    let literal = format!(
        "import os\nos.environ[\"PYTORCH_CUDA_ALLOC_CONF\"] = 'max_split_size_mb:64'\n{LOOP}"
    );
    let d = project(&[("train.py", &literal)]);
    let p = analyze(d.path(), &alloc_target("expandable_segments:True")).unwrap();
    assert_eq!(
        new_text(&p, "train.py"),
        literal.replace("'max_split_size_mb:64'", "\"expandable_segments:True\"")
    );
    let computed =
        format!("import os\nos.environ[\"PYTORCH_CUDA_ALLOC_CONF\"] = cfg.alloc\n{LOOP}");
    let d = project(&[("train.py", &computed)]);
    let p = analyze(d.path(), &alloc_target("expandable_segments:True")).unwrap();
    assert!(p.files.is_empty(), "{}", p.unified_diff());
    assert!(has_note(&p, M::AllocComputed));
}

#[test]
fn alloc_conf_in_the_readme_is_written_once() {
    let d = project(&[("train.py", LOOP), ("README.md", "# Project\n")]);
    let t = alloc_target("expandable_segments:True");
    let p = analyze(d.path(), &t).unwrap();
    second_run_changes_nothing(&d, &p, &t);
    let p = analyze(d.path(), &alloc_target("max_split_size_mb:128")).unwrap();
    let r = new_text(&p, "README.md");
    assert_eq!(r.matches("PYTORCH_CUDA_ALLOC_CONF").count(), 1, "{r}");
    assert!(
        r.contains("export PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128\n"),
        "{r}"
    );
}

#[test]
fn accumulation_gates_the_step_past_other_statements() {
    let src = "import torch\n\nopt = torch.optim.SGD(net.parameters(), lr=0.1)\ntotal = 0.0\nfor x in loader:\n    opt.zero_grad()\n    loss = net(x)\n    loss.backward()\n    total += loss.item()\n    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)\n    opt.step()\n    print(total)\n";
    let d = project(&[("train.py", src)]);
    let t = Target {
        grad_accum: Some(4),
        precision: Some(Precision::Fp16Mixed),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("    scaler.scale(loss).backward()\n    total += loss.item()\n    if (micro_step + 1) % grad_accum_steps == 0:\n        scaler.unscale_(opt)  # clip the true gradients\n        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)\n        scaler.step(opt)\n        scaler.update()\n        opt.zero_grad()\n    print(total)\n"),
        "{s}"
    );
    second_run_changes_nothing(&d, &p, &t);
}

/// A step the loop does not call directly cannot be gated: then nothing of the accumulation or
/// the scaler is written (a divided loss with an ungated step, or a scaled loss with a plain
/// step, would train wrongly).
#[test]
fn accumulation_is_all_or_nothing() {
    let src = "import torch\n\nopt = torch.optim.SGD(net.parameters(), lr=0.1)\nfor x in loader:\n    loss = net(x)\n    loss.backward()\n    with timer():\n        opt.step()\n    opt.zero_grad()\n";
    let d = project(&[("train.py", src)]);
    for t in [
        Target {
            grad_accum: Some(4),
            ..Default::default()
        },
        Target {
            precision: Some(Precision::Fp16Mixed),
            ..Default::default()
        },
    ] {
        let p = analyze(d.path(), &t).unwrap();
        let s = p
            .files
            .iter()
            .find(|f| f.path == "train.py")
            .map_or(src, |f| f.new.as_str());
        assert!(
            !s.contains("grad_accum_steps") && !s.contains("scaler"),
            "{s}"
        );
        assert!(has_note(&p, M::LoopShape));
    }
}

/// Which DataLoader feeds training must not depend on the settings fix writes into it: the
/// config key `cfg["train"]` in a batch_size does not make a loader the training one.
#[test]
fn training_loader_is_chosen_by_what_it_reads() {
    let src = "import itertools\nimport torch\nfrom torch.utils.data import DataLoader\n\nval_loader = DataLoader(val_ds, batch_size=cfg[\"train\"][\"bs\"])\ntrain_loader = DataLoader(ds, batch_size=cfg[\"train\"][\"bs\"])\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\nfor x in itertools.islice(train_loader, 100):\n    loss = model(x)\n    loss.backward()\n    opt.step()\n";
    let d = project(&[("train.py", src)]);
    let t = Target {
        batch: Some(8),
        dataloader: DataLoaderOpts {
            num_workers: Some(4),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("val_loader = DataLoader(val_ds, batch_size=cfg[\"train\"][\"bs\"])\ntrain_loader = DataLoader(ds, batch_size=8, num_workers=4)\n"),
        "{s}"
    );
    second_run_changes_nothing(&d, &p, &t);
}

/// Settings appended to a file that has no final newline go on lines of their own.
#[test]
fn lines_appended_after_a_last_line_without_newline() {
    let cli = "from lightning.pytorch.cli import LightningCLI\n\nif __name__ == \"__main__\":\n    LightningCLI(Model, DM)\n";
    let d = project(&[
        ("main.py", cli),
        ("config.yaml", "trainer:\n  max_epochs: 3\n  devices: 1"),
    ]);
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        grad_accum: Some(4),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    assert_eq!(
        new_text(&p, "config.yaml"),
        "trainer:\n  max_epochs: 3\n  devices: 1\n  precision: bf16-mixed\n  accumulate_grad_batches: 4\n"
    );
    second_run_changes_nothing(&d, &p, &t);
}

/// GPT-2-style models keep their blocks in a ModuleDict: `self.transformer.h`.
#[test]
fn blocks_in_a_module_dict_are_checkpointed() {
    for (dict, path) in [
        (
            "dict(wte=nn.Embedding(V, D), h=nn.ModuleList([Block() for _ in range(L)]))",
            "transformer.h",
        ),
        (
            "{\"wte\": nn.Embedding(V, D), \"h\": nn.ModuleList([Block() for _ in range(L)])}",
            "gpt.transformer.h",
        ),
    ] {
        let model = format!("import torch.nn as nn\n\n\nclass GPT(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.transformer = nn.ModuleDict({dict})\n\n    def forward(self, x):\n        for block in self.transformer.h:\n            x = block(x)\n        return x\n\n\nclass Wrapper(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.gpt = GPT()\n");
        let d = project(&[("model.py", &model), ("train.py", LOOP)]);
        for t in [
            Target {
                checkpointing: Some(Checkpointing::Full),
                ..Default::default()
            },
            Target {
                checkpointing: Some(Checkpointing::Selective),
                checkpoint_modules: vec![path.into()],
                ..Default::default()
            },
        ] {
            let p = analyze(d.path(), &t).unwrap();
            let s = new_text(&p, "model.py");
            assert!(
                s.contains(
                    "x = checkpoint(block, x, use_reentrant=False) if self.training else block(x)"
                ),
                "{t:?}: {s}"
            );
        }
    }
}

/// nanoGPT's loop: micro-batches in an inner `range` loop, the step after it, and autocast
/// entered through a context variable.
const MICRO_LOOP: &str = "import argparse\nfrom contextlib import nullcontext\nimport torch\n\np = argparse.ArgumentParser()\np.add_argument('--accum', default=1, type=int)\nargs = p.parse_args()\nctx = nullcontext() if args.device == 'cpu' else torch.amp.autocast(device_type='cuda', dtype=torch.float32)\nscaler = torch.cuda.amp.GradScaler(enabled=(args.dtype == 'float16'))\nopt = torch.optim.AdamW(model.parameters(), lr=1e-3)\nfor it in range(1000):\n    for micro_step in range(args.accum):\n        with ctx:\n            logits, loss = model(X, Y)\n            loss = loss / args.accum\n        X, Y = get_batch()\n        scaler.scale(loss).backward()\n    scaler.unscale_(opt)\n    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n    scaler.step(opt)\n    scaler.update()\n    opt.zero_grad(set_to_none=True)\n";

#[test]
fn accumulation_over_an_inner_loop_is_set_where_its_count_is() {
    let d = project(&[("train.py", MICRO_LOOP)]);
    let t = Target {
        grad_accum: Some(4),
        precision: Some(Precision::Bf16Mixed),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    let expected = MICRO_LOOP
        .replace("'--accum', default=1,", "'--accum', default=4,")
        .replace("dtype=torch.float32)", "dtype=torch.bfloat16)");
    assert_eq!(s, expected);
    assert!(explains(&p, M::LoopAccumInner));
    assert!(!has_note(&p, M::LoopShape));
    second_run_changes_nothing(&d, &p, &t);
    // fp16: the user's scaler is switched by a setting, which fix cannot see.
    let p = analyze(
        d.path(),
        &Target {
            precision: Some(Precision::Fp16Mixed),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(has_note(&p, M::LoopScalerSwitch));
}

#[test]
fn fused_adamw_is_explained_as_an_added_argument() {
    let d = project(&[(
        "train.py",
        &LOOP.replace(
            "SGD(net.parameters(), lr=0.1)",
            "AdamW(net.parameters(), lr=0.1)",
        ),
    )]);
    let t = Target {
        optimizer: Some(Optimizer::AdamwFused),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    assert!(new_text(&p, "train.py")
        .contains("torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)"));
    assert!(explains(&p, M::OptArgs));
    assert!(!explains(&p, M::OptSwap));
}

/// Batches cut by hand (no DataLoader): the batch size is the setting every read of
/// `*.batch_size` leads to; when reads lead to different places, nothing is guessed.
#[test]
fn batch_size_setting_without_a_dataloader() {
    let src = MICRO_LOOP.replace(
        "args = p.parse_args()\n",
        "p.add_argument('--batch_size', default=64, type=int)\nargs = p.parse_args()\n\n\ndef get_batch():\n    ix = torch.randint(1000, (args.batch_size,))\n    return data[ix], data[ix + 1]\n\n\n",
    );
    let d = project(&[("train.py", &src)]);
    let t = Target {
        batch: Some(16),
        grad_accum: Some(4),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("p.add_argument('--batch_size', default=16, type=int)"),
        "{s}"
    );
    assert!(explains(&p, M::BatchSetting));
    // 64 x 1 before, 16 x 4 after: the learning rate stays.
    assert!(has_note(&p, M::LrSame));
    let two = src.replace(
        "    return data[ix], data[ix + 1]\n",
        "    return data[ix], data[ix + config.batch_size]\n",
    );
    let d = project(&[("train.py", &two), ("config.py", "batch_size = 8\n")]);
    let two = format!("import config\n{two}");
    std::fs::write(d.path().join("train.py"), &two).unwrap();
    let p = analyze(d.path(), &t).unwrap();
    assert!(!explains(&p, M::BatchSetting), "{}", p.unified_diff());
    assert!(has_note(&p, M::NoDataLoader));
}

/// fix run twice, accumulation first: the second run's autocast covers the forward pass, not
/// the rescaling of the loss the first run wrote.
#[test]
fn autocast_ends_at_the_loss_definition() {
    let d = project(&[("train.py", LOOP)]);
    let accum = Target {
        grad_accum: Some(4),
        ..Default::default()
    };
    let p = analyze(d.path(), &accum).unwrap();
    write_patch(&d, &p);
    let prec = Target {
        precision: Some(Precision::Bf16Mixed),
        ..Default::default()
    };
    let p = analyze(d.path(), &prec).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("    with torch.autocast(device_type=\"cuda\", dtype=torch.bfloat16):\n        loss = net(x)\n    loss = loss / grad_accum_steps"),
        "{s}"
    );
    write_patch(&d, &p);
    for t in [accum, prec] {
        let again = analyze(d.path(), &t).unwrap();
        assert!(again.files.is_empty(), "{}", again.unified_diff());
    }
}

/// A parameter passed by position at the call site is set there; when the value passed cannot
/// be followed, the parameter's default (never used by that call) is not edited either.
#[test]
fn positional_call_sites_decide_a_parameter() {
    let body = |call: &str| {
        format!("import torch\nfrom torch.utils.data import DataLoader\n\n\ndef make_loader(ds, batch_size=16):\n    return DataLoader(ds, batch_size=batch_size)\n\n\ntrain_loader = make_loader(ds, {call})\n{}", &LOOP["import torch\n".len()..])
    };
    let t = Target {
        batch: Some(8),
        ..Default::default()
    };
    let d = project(&[("train.py", &body("32"))]);
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("train_loader = make_loader(ds, 8)") && s.contains("batch_size=16):"),
        "{s}"
    );
    let d = project(&[("train.py", &body("pick_batch()"))]);
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("batch_size=16):") && s.contains("DataLoader(ds, batch_size=8)"),
        "{s}"
    );
    assert!(has_note(&p, M::ReplacedExpr));
}

/// An accelerate loop that counts micro-batches itself: its own count is set, not
/// Accelerator(gradient_accumulation_steps=...), which only `accelerator.accumulate` reads.
#[test]
fn accelerate_loop_with_its_own_accumulation() {
    let src = "from accelerate import Accelerator\nimport torch\n\naccelerator = Accelerator()\naccum = 2\nloader = torch.utils.data.DataLoader(ds, batch_size=32)\nopt = torch.optim.AdamW(model.parameters(), lr=1e-3)\nmodel, opt, loader = accelerator.prepare(model, opt, loader)\nfor step, batch in enumerate(loader):\n    loss = model(batch) / accum\n    accelerator.backward(loss)\n    if step % accum == 0:\n        opt.step()\n        opt.zero_grad()\n";
    let d = project(&[("train.py", src)]);
    let t = Target {
        grad_accum: Some(4),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    assert_eq!(
        new_text(&p, "train.py"),
        src.replace("accum = 2\n", "accum = 4\n")
    );
    assert!(!has_note(&p, M::AccNoContext));
    let unknown = src.replace("accum = 2\n", "accum = cfg_accum()\n");
    let d = project(&[("train.py", &unknown)]);
    let p = analyze(d.path(), &t).unwrap();
    assert!(p.files.is_empty(), "{}", p.unified_diff());
    assert!(has_note(&p, M::AccManual));
}

/// PyTorch's AMP recipe: `scaler.scale(loss).backward()` and `scaler.step(opt)`, autocast
/// switched by a flag.
#[test]
fn amp_recipe_loop_is_edited() {
    let src = "import torch\n\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\nscaler = torch.cuda.amp.GradScaler(enabled=args.amp)\nfor x, y in loader:\n    opt.zero_grad()\n    with torch.cuda.amp.autocast(enabled=args.amp):\n        loss = crit(model(x), y)\n    scaler.scale(loss).backward()\n    scaler.step(opt)\n    scaler.update()\n";
    let d = project(&[("train.py", src)]);
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        grad_accum: Some(2),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("for micro_step, (x, y) in enumerate(loader):\n    with torch.cuda.amp.autocast(enabled=args.amp, dtype=torch.bfloat16):\n        loss = crit(model(x), y)\n    loss = loss / grad_accum_steps  # average over the accumulated micro-batches\n    scaler.scale(loss).backward()\n    if (micro_step + 1) % grad_accum_steps == 0:\n        scaler.step(opt)\n        scaler.update()\n        opt.zero_grad()\n"),
        "{s}"
    );
    assert!(has_note(&p, M::LoopAutocastSwitch));
    assert!(!has_note(&p, M::LoopShape));
    second_run_changes_nothing(&d, &p, &t);
}

/// A keyword added to a multi-line call that closes on its last argument's line (`b=2,)`)
/// goes inside the call: after the line's end it would be a statement of its own
/// (`fp16=True,` assigns a tuple and still parses).
#[test]
fn keyword_added_before_a_closing_parenthesis_on_the_same_line() {
    for (last, expected) in [
        ("    per_device_train_batch_size=8,)\n", "    per_device_train_batch_size=8,\n    gradient_accumulation_steps=4,)\n"),
        ("    per_device_train_batch_size=8,  # per GPU\n)\n", "    per_device_train_batch_size=8,  # per GPU\n    gradient_accumulation_steps=4,\n)\n"),
    ] {
        let src = format!("from transformers import Trainer, TrainingArguments\nargs = TrainingArguments(\n    output_dir=\"out\",\n{last}Trainer(model=m, args=args).train()\n");
        let d = project(&[("train.py", &src)]);
        let t = Target {
            grad_accum: Some(4),
            ..Default::default()
        };
        let p = analyze(d.path(), &t).unwrap();
        assert!(new_text(&p, "train.py").contains(expected), "{}", new_text(&p, "train.py"));
    }
}

/// Several keywords added to an empty call (`L.Trainer()`) are separated.
#[test]
fn keywords_added_to_an_empty_call() {
    let src = "import lightning as L\n\n\nclass M(L.LightningModule):\n    def training_step(self, b, i):\n        return self(b)\n\n\ntrainer = L.Trainer()\ntrainer.fit(M(), loader)\n";
    let d = project(&[("train.py", src)]);
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        grad_accum: Some(2),
        ..Default::default()
    };
    let p = analyze(d.path(), &t).unwrap();
    let s = new_text(&p, "train.py");
    assert!(
        s.contains("trainer = L.Trainer(precision=\"bf16-mixed\", accumulate_grad_batches=2)\n")
            || s.contains(
                "trainer = L.Trainer(accumulate_grad_batches=2, precision=\"bf16-mixed\")\n"
            ),
        "{s}"
    );
}

/// A key added to a config is read back first: where the trainer block holds lines that are not
/// `key: value` settings, the new line would not be `trainer.<key>` and is not written.
#[test]
fn config_keys_are_read_back_before_they_are_written() {
    let cli = "from lightning.pytorch.cli import LightningCLI\n\nif __name__ == \"__main__\":\n    LightningCLI(Model, DM)\n";
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        ..Default::default()
    };
    let good = "trainer:\n  max_epochs: 3\n  callbacks:\n    - class_path: EarlyStopping\n      init_args:\n        monitor: val_loss\n";
    let d = project(&[("main.py", cli), ("config.yaml", good)]);
    let p = analyze(d.path(), &t).unwrap();
    assert_eq!(
        new_text(&p, "config.yaml"),
        format!("{good}  precision: bf16-mixed\n")
    );
    // A comment after the block's header: the key goes into that block, not a second one.
    let commented = "trainer:  # Lightning Trainer\n  max_epochs: 3\n";
    let d = project(&[("main.py", cli), ("config.yaml", commented)]);
    let p = analyze(d.path(), &t).unwrap();
    assert_eq!(
        new_text(&p, "config.yaml"),
        format!("{commented}  precision: bf16-mixed\n")
    );
}

/// Mixed precision asked of a model loaded in half precision: said, since its weights would be
/// trained in half precision.
#[test]
fn half_precision_weights_are_noted_for_mixed_precision() {
    let src = HF.replace(
        "from_pretrained(\"gpt2\")",
        "from_pretrained(\"gpt2\", torch_dtype=torch.float16)",
    );
    let d = project(&[("train.py", &src)]);
    for (prec, noted) in [
        (Precision::Bf16Mixed, true),
        (Precision::Fp16Mixed, true),
        (Precision::Bf16True, false),
    ] {
        let t = Target {
            precision: Some(prec),
            ..Default::default()
        };
        let p = analyze(d.path(), &t).unwrap();
        assert_eq!(has_note(&p, M::HalfWeights), noted, "{prec:?}");
    }
    let d = project(&[("train.py", HF)]);
    let t = Target {
        precision: Some(Precision::Bf16Mixed),
        ..Default::default()
    };
    assert!(!has_note(&analyze(d.path(), &t).unwrap(), M::HalfWeights));
}
