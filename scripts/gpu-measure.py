#!/usr/bin/env python3
"""Measurements that need a GPU: per-op memory profiles of calibration rows, and held-out rows.

Usage: python scripts/gpu-measure.py CALIBRATION_DIR OUTDIR [--parts opprof,rows] [--deadline S]
       [--device cpu --tiny]  (smoke test without a GPU)

CALIBRATION_DIR holds harness.py, navdp_like.py and navdp_model.py (the calibration harness);
rows are measured with its `run_config`, exactly as the calibration file was.

opprof: for the named calibration configurations, one warm-up and one steady step under a
  TorchDispatchMode that records, for every aten op (forward, backward, optimizer), the allocated
  bytes before and after it, the peak allocated inside it (the op's transient: cuBLAS/cuDNN
  workspaces, temporaries) and the reserved bytes after it; plus the caching allocator's own
  event stream (`torch.cuda.memory._record_memory_history`, no stack frames). The op records carry
  the allocator's cumulative alloc/free counts, which place each op in the event stream.
  Writes OUTDIR/opprof_<name>.jsonl.gz and OUTDIR/snapshot_<name>.pickle.gz.
rows: held-out architectures measured like the calibration file, one JSON line each with the
  `estimate_args` that describe the run to `oomdoc estimate` (HF configs under OUTDIR/models/).
trace (with --device cpu, no GPU): each held-out configuration traced on the CPU with oomdoc_probe at
  batch sizes 1 and 2, for `oomdoc estimate --model trace:` (the traced tier on the held-out rows:
  `cargo run --release --example trace_accuracy -- MEASUREMENTS OUTDIR/traces`). Writes
  OUTDIR/traces/<workload>_<prec>_<ckpt|nockpt>_<opt>.trace.json.gz; existing traces are kept.
history: calibration rows measured again exactly as the calibration harness measured them
  (`harness.run_config`: warm-up and 3 steps), each twice: first with the caching allocator's event
  stream recorded (`_record_memory_history`, no stack frames) and step marks (wall-clock microseconds
  at each forward and optimizer step), then without recording (is the measurement repeatable, and
  does recording change it?). Writes OUTDIR/history_rows.jsonl and OUTDIR/history/<name>.pickle.gz
  (snapshot, memory_stats, marks).
plancheck: the configurations `oomdoc plan` proposed (`scripts/plan-cases.py` writes --plan-cases),
  each run with the caching allocator capped at the plan's memory budget minus the memory the
  process already uses outside PyTorch: does it fit, and how do peak and step time compare with
  the prediction. Writes OUTDIR/plancheck.jsonl.
"""
import argparse, gc, gzip, json, os, pickle, sys, time, traceback

import torch

P = argparse.ArgumentParser()
P.add_argument("calibration")
P.add_argument("out")
P.add_argument("--parts", default="opprof,rows")
P.add_argument("--only", default="")
P.add_argument("--deadline", type=float, default=400)
P.add_argument("--device", default="cuda")
P.add_argument("--tiny", action="store_true")
P.add_argument("--plan-cases", default="")
A = P.parse_args()
sys.path.insert(0, os.path.abspath(A.calibration))
import harness as H  # noqa: E402
import navdp_like as N  # noqa: E402
import navdp_model as M  # noqa: E402

H.DEV, H.TINY = A.device, A.tiny
CUDA = A.device == "cuda"
T0 = time.time()
os.makedirs(os.path.join(A.out, "models"), exist_ok=True)


def left():
    return A.deadline - (time.time() - T0)


# ---------------------------------------------------------------- workloads
def navdp(variant="user", ckpt=False, ckpt_vit=False, sdpa=False, ckpt_dec=False):
    def build(_ck):
        a = N._args(ckpt or ckpt_dec, A.tiny)
        a.variant, a.sdpa = variant, sdpa
        if variant == "official":
            a.freeze_rgb = True  # InternNav HEAD: finetune=False
        m = M.NavDPLike(a)
        m.rgb_model.ckpt = m.depth_model.ckpt = ckpt_vit or ckpt
        return m, {}

    def batch(B, V):
        a = N._args(False, A.tiny)
        a.variant, a.batch = variant, B
        return M.make_batch(a, H.DEV)

    return dict(build=build, make_batch=batch, loss=N.loss_fn)


def hf(kind, lora=None, attn=None):
    """An HF model from an explicit config (saved for `--model hf:`), optionally with peft LoRA."""
    import transformers as T

    tiny = A.tiny
    if kind == "llama16":
        cfg = T.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                            num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096)
    elif kind == "qwen2.5-0.5b":
        cfg = T.Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                            tie_word_embeddings=True, rope_theta=1000000.0)
    elif kind == "gpt2":
        cfg = T.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    elif kind == "gpt2-medium":
        cfg = T.GPT2Config(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257)
    elif kind == "bert-large":
        cfg = T.BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    elif kind == "t5-small":
        cfg = T.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                         decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    else:
        raise ValueError(kind)
    if tiny:  # keep the family, shrink the sizes
        for k, v in dict(num_hidden_layers=2, n_layer=2, num_layers=2, vocab_size=500).items():
            if hasattr(cfg, k):
                setattr(cfg, k, v)
    path = os.path.join(A.out, "models", f"{kind}.config.json")
    with open(path, "w") as f:
        f.write(cfg.to_json_string(use_diff=False))

    def build(ck):
        if kind == "t5-small":
            m = T.T5ForConditionalGeneration(cfg)
        elif kind == "bert-large":
            m = T.BertForMaskedLM(cfg)
        else:
            m = T.AutoModelForCausalLM.from_config(cfg, **({"attn_implementation": attn} if attn else {}))
        if ck:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.config.use_cache = False
        if lora:
            import peft
            m = peft.get_peft_model(m, peft.LoraConfig(r=lora[0], lora_alpha=2 * lora[0], target_modules=lora[1],
                                                        lora_dropout=0.0))
        return m, dict(vocab=cfg.vocab_size, attn_impl=getattr(m.config, "_attn_implementation", None))

    return build, f"hf:models/{kind}.config.json"


def lm(kind, S, lora=None, task="causal-lm", attn=None):
    build, model_arg = hf(kind, lora, attn)
    S = 16 if A.tiny else S

    def batch(B, V):
        ids = torch.randint(0, V, (B, S), device=H.DEV)
        return {"input_ids": ids, "labels": ids}

    args = f"--model {model_arg} --task {task} --seq-len {S}"
    if lora:
        args += f" --lora-rank {lora[0]} --lora-targets {','.join(lora[1])}"
    return dict(build=build, make_batch=batch, loss=H.lm_loss), args


def t5(S, Tt):
    build, model_arg = hf("t5-small")
    S, Tt = (16, 8) if A.tiny else (S, Tt)

    def batch(B, V):
        return {"input_ids": torch.randint(0, V, (B, S), device=H.DEV),
                "labels": torch.randint(0, V, (B, Tt), device=H.DEV)}

    return dict(build=build, make_batch=batch, loss=H.lm_loss), \
        f"--model {model_arg} --task seq2seq-lm --seq-len {S} --target-len {Tt}"


def vision(kind, timm_name=None):
    res = 32 if A.tiny else 224

    def build(ck):
        if timm_name:
            import timm
            m = timm.create_model("vit_tiny_patch16_224" if A.tiny else timm_name, pretrained=False,
                                  **({"img_size": 32} if A.tiny else {}))
            if ck:
                m.set_grad_checkpointing(True)
            return m, {}
        import torchvision
        return H.CkptResNet(getattr(torchvision.models, kind)(), ck), {}

    return dict(build=build, make_batch=lambda B, V: H.img_batch(B, res), loss=H.img_loss), \
        f"--model preset:{kind} --image-size 224 --num-classes 1000"


PREC = {"fp32": "fp32", "amp_bf16": "bf16-mixed", "amp_fp16": "fp16-mixed", "bf16_pure": "bf16-true"}
OPT = {"adamw": "adamw", "adamw_fused": "adamw-fused", "sgd": "sgd-momentum"}


def estimate_args(base, cfg):
    ck = "full" if cfg["ckpt"] else "none"
    return (f"{base} --batch {cfg['batch']} --precision {PREC[cfg['prec']]} --checkpointing {ck} "
            f"--optimizer {OPT[cfg['opt']]} --grad-accum {cfg.get('accum', 1)}")


# ---------------------------------------------------------------- per-op profile
class OpProfile(torch.utils._python_dispatch.TorchDispatchMode):
    """Per aten op: allocated before/after, the peak inside it, reserved after, allocator counters."""

    def __init__(self, sink):
        super().__init__()
        self.sink, self.phase, self.step, self.seq = sink, "setup", 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not CUDA:
            return func(*args, **(kwargs or {}))
        st = torch.cuda.memory_stats()
        before = st["allocated_bytes.all.current"]
        n_alloc0, n_free0 = st["allocation.all.allocated"], st["allocation.all.freed"]
        torch.cuda.reset_peak_memory_stats()
        out = func(*args, **(kwargs or {}))
        st = torch.cuda.memory_stats()
        outs = out if isinstance(out, (tuple, list)) else [out]
        shapes = [[list(t.shape), str(t.dtype).replace("torch.", "")] for t in outs if torch.is_tensor(t)]
        self.sink.write(json.dumps(dict(
            i=self.seq, step=self.step, phase=self.phase, op=str(func), out=shapes, before=before,
            peak=st["allocated_bytes.all.peak"], after=st["allocated_bytes.all.current"],
            reserved=st["reserved_bytes.all.current"], n_alloc=[n_alloc0, st["allocation.all.allocated"]],
            n_free=[n_free0, st["allocation.all.freed"]])) + "\n")
        self.seq += 1
        return out


def opprof(name, w, cfg):
    """Warm-up and one steady step of `cfg` under OpProfile (same step as harness.run_config)."""
    H.reset()
    torch.manual_seed(0)
    model, info = w["build"](cfg["ckpt"])
    model.train()
    model = model.to(H.DEV)
    ps = [p for p in model.parameters() if p.requires_grad]
    o = torch.optim.AdamW(ps, lr=1e-4)
    batch = w["make_batch"](cfg["batch"], info.get("vocab", 1000))
    path = os.path.join(A.out, f"opprof_{name}.jsonl.gz")
    if CUDA:
        torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python", max_entries=2_000_000)
    summary = dict(name=name, cfg=cfg, base_allocated=H.alloc())
    with gzip.open(path, "wt") as sink:
        mode = OpProfile(sink)
        with mode:
            for step in range(2):
                mode.step = step
                mode.phase = "forward"
                if cfg["prec"] == "amp_bf16":
                    with torch.autocast(H.DEV, dtype=torch.bfloat16):
                        loss = w["loss"](model, batch)
                else:
                    loss = w["loss"](model, batch)
                mode.phase = "backward"
                loss.backward()
                del loss
                mode.phase = "optimizer"
                o.step()
                o.zero_grad(set_to_none=True)
                mode.phase = "between"
    if CUDA:
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        with gzip.open(os.path.join(A.out, f"snapshot_{name}.pickle.gz"), "wb") as f:
            pickle.dump(snap, f)
        summary.update(max_reserved=torch.cuda.max_memory_reserved(), reserved=torch.cuda.memory_reserved(),
                       retries=torch.cuda.memory_stats().get("num_alloc_retries"))
    summary["ops"] = mode.seq
    del model, o, batch
    H.reset()
    return summary


OPPROF = {
    "vit_b16_bf16_b64": (vision("vit_b16", "vit_base_patch16_224")[0], dict(batch=64, prec="amp_bf16", ckpt=False)),
    "resnet18_fp32_b128": (vision("resnet18")[0], dict(batch=128, prec="fp32", ckpt=False)),
    "navdp_bf16_ckpt_b8": (navdp(ckpt=True), dict(batch=8, prec="amp_bf16", ckpt=True)),
    "navdp_fp32_ckpt_b16": (navdp(ckpt=True), dict(batch=16, prec="fp32", ckpt=True)),
    "navdp_fp32_ckptvit_b16": (navdp(ckpt_vit=True), dict(batch=16, prec="fp32", ckpt=False)),
}
# held-out rows with the largest errors (tests/fixtures/calibration-holdout)
OPPROF_HOLDOUT = {
    "resnet50_fp32_ckpt_b64": (lambda: vision("resnet50")[0], dict(batch=64, prec="fp32", ckpt=True)),
    "llama16_bf16_ckpt_b8": (lambda: lm("llama16", 1024)[0], dict(batch=8, prec="amp_bf16", ckpt=True)),
}


# ---------------------------------------------------------------- held-out rows
def C(batch, prec="fp32", ckpt=False, opt="adamw", **kw):
    return dict(batch=batch, prec=prec, ckpt=ckpt, opt=opt, **kw)


def rows():
    out = []
    w, base = vision("resnet50")
    out.append(("resnet50_224", w, base, [C(64), C(64, "amp_bf16"), C(64, "fp32", True)]))
    w, base = vision("vit-s16", "vit_small_patch16_224")
    out.append(("vit_s16_224", w, base, [C(128), C(128, "amp_bf16"), C(128, "amp_bf16", True)]))
    w, base = vision("vit-l16", "vit_large_patch16_224")
    out.append(("vit_l16_224", w, base, [C(32, "amp_bf16")]))
    out.append(("navdp_upstream", navdp(variant="official"), "--model preset:navdp-upstream",
                [C(16), C(16, "amp_bf16")]))
    w, base = lm("llama16", 1024)
    out.append(("llama16_1024d_s1024", w, base, [C(8), C(8, "amp_bf16"), C(8, "amp_bf16", True)]))
    w, base = t5(512, 128)
    out.append(("t5_small_s512_t128", w, base, [C(16), C(16, "amp_bf16")]))
    w, base = lm("gpt2-medium", 1024)
    out.append(("gpt2_medium_s1024", w, base, [C(4, "amp_bf16"), C(4, "amp_bf16", True)]))
    w, base = lm("bert-large", 512, task="masked-lm")
    out.append(("bert_large_s512", w, base, [C(8, "amp_bf16")]))
    w, base = lm("qwen2.5-0.5b", 512)
    out.append(("qwen2.5_0.5b_s512", w, base, [C(8, "amp_bf16")]))
    w, base = lm("qwen2.5-0.5b", 512, lora=(8, ["q_proj", "v_proj"]))
    out.append(("qwen2.5_0.5b_s512_lora8", w, base, [C(8, "amp_bf16")]))
    # architectures only the traced tier covers (no preset): depthwise convolutions, windowed
    # attention; `estimate_args` is empty, the traces come from scripts/trace-calibration.py
    for name, timm_name in ({} if A.tiny else TIMM).items():
        w, _ = vision(name, timm_name)
        out.append((name, w, None, [C(64), C(64, "amp_bf16")]))
    return out


TIMM = {"convnext_tiny_224": "convnext_tiny", "swin_tiny_224": "swin_tiny_patch4_window7_224",
        "efficientnet_b0_224": "efficientnet_b0"}


# ---------------------------------------------------------------- CPU traces of the held-out rows
def trace_rows(only):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import oomdoc_probe
    from trace_step import trace_gz, training_step

    out = os.path.join(A.out, "traces")
    os.makedirs(out, exist_ok=True)
    for wname, w, base, cfgs in rows():
        for cfg in cfgs:
            name = f"{wname}_{cfg['prec']}_{'ckpt' if cfg['ckpt'] else 'nockpt'}_{cfg['opt']}"
            path = os.path.join(out, name + ".trace.json")
            if (only and wname not in only and name not in only) or os.path.exists(path + ".gz"):
                continue
            t = time.time()
            torch.manual_seed(0)
            model, info = w["build"](cfg["ckpt"])
            model.train()
            V = info.get("vocab", 1000)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            step = training_step(model, lambda B: w["make_batch"](B, V), w["loss"], opt, cfg["prec"])
            trace_gz(oomdoc_probe, step, path, model, opt)
            print("trace", name, round(time.time() - t, 1), "s", flush=True)
            del model, opt
            gc.collect()


# ---------------------------------------------------------------- allocator history of calibration rows
# (name, harness workload, NavDP variant, configuration). The first run of a process allocates the
# cuBLAS workspaces that stay for the later ones (the calibration rows' `a0`), so a cheap row goes first.
HISTORY = [
    ("resnet18_fp32_b64", "resnet18_224", {}, C(64)),
    ("navdp_fp32_ckptvit_b16", "navdp_like", {"ckpt_vit": True}, C(16)),
    ("navdp_bf16_ckptvit_b16", "navdp_like", {"ckpt_vit": True}, C(16, "amp_bf16")),
    ("resnet18_fp32_b128", "resnet18_224", {}, C(128)),
    ("vit_b16_bf16_ckpt_b64", "vit_b16_224", {}, C(64, "amp_bf16", True)),
    ("navdp_bf16_ckpt_b8", "navdp_like", {}, C(8, "amp_bf16", True)),
]


def history_workload(wname, variant):
    # navdp() builds the variants as variants.py does (same model arguments and batch)
    return navdp(**variant) if variant else H.WORKLOADS[wname]


def history(only):
    H.setup_workloads()
    os.makedirs(os.path.join(A.out, "history"), exist_ok=True)
    marks = []
    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: marks.append(("forward", time.time_ns() // 1000)) if not marks or marks[-1][0] != "forward" else None),
        __import__("torch.optim.optimizer", fromlist=["x"]).register_optimizer_step_pre_hook(
            lambda o, a, k: marks.append(("optimizer", time.time_ns() // 1000)))]
    with open(os.path.join(A.out, "history_rows.jsonl"), "a") as f:
        for name, wname, variant, cfg in HISTORY:
            if only and name not in only:
                continue
            for record in (True, False):
                if left() < 40:
                    print("skip", name, record, flush=True)
                    continue
                marks.clear()
                if record and CUDA:
                    torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python",
                                                             max_entries=4_000_000)
                t = time.time()
                try:
                    rec = H.run_config(wname, history_workload(wname, variant), dict(cfg))
                except Exception as e:
                    traceback.print_exc()
                    rec = dict(workload=wname, **cfg, error=f"{type(e).__name__}: {str(e)[:500]}")
                if record and CUDA:
                    snap = torch.cuda.memory._snapshot()
                    torch.cuda.memory._record_memory_history(enabled=None)
                    with gzip.open(os.path.join(A.out, "history", f"{name}.pickle.gz"), "wb") as g:
                        pickle.dump(dict(snapshot=dict(segments=snap["segments"], device_traces=snap["device_traces"],
                                                       allocator_settings=snap.get("allocator_settings", {})),
                                         memory_stats=torch.cuda.memory_stats(), marks=list(marks)), g)
                rec = dict(name=name, recorded=record, variant=variant, gpu=torch.cuda.get_device_name(0) if CUDA else "cpu",
                           seconds=round(time.time() - t, 1), **rec)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print("history", name, "recorded" if record else "plain", "alloc", H.mib(rec.get("peak_alloc", 0)),
                      "res", H.mib(rec.get("peak_reserved", 0)), "step1", H.mib(rec.get("peak_reserved_step1", 0)),
                      "a0", rec.get("a0"), rec.get("error", "")[:200], flush=True)
                H.reset()
    for h in hooks:
        h.remove()


# ---------------------------------------------------------------- plan check
PREC_OF = {"fp32": "fp32", "tf32": "fp32", "bf16-mixed": "amp_bf16", "fp16-mixed": "amp_fp16",
           "bf16-true": "bf16_pure"}
OPT_OF = {"adamw": "adamw", "adamw-fused": "adamw_fused", "sgd-momentum": "sgd"}


def plan_workload(case):
    k = case["knobs"]
    mods = set(k.get("checkpoint_modules") or [])
    sdpa = k["attention"] == "sdpa"
    if case["workload"] == "navdp":
        sel = k["checkpointing"] == "selective"
        return navdp(ckpt=k["checkpointing"] == "full", sdpa=sdpa,
                     ckpt_vit=sel and bool(mods & {"rgb_model.blocks", "depth_model.blocks"}),
                     ckpt_dec=sel and "decoder" in mods)
    if case["workload"] == "gpt2":
        return lm("gpt2", 1024, attn=None if sdpa else "eager")[0]
    if case["workload"] == "vit_b16":
        w = vision("vit_b16", "vit_base_patch16_224")[0]
        if not sdpa:
            build = w["build"]

            def eager(ck):
                m, info = build(ck)
                for b in m.blocks:
                    b.attn.fused_attn = False
                return m, info
            w = dict(w, build=eager)
        return w
    raise ValueError(case["workload"])


def plancheck():
    cases = json.load(open(A.plan_cases))
    out = open(os.path.join(A.out, "plancheck.jsonl"), "a")
    for case in cases:
        k = case["knobs"]
        if left() < 20 or k.get("gpus", 1) != 1 or k["optimizer"] not in OPT_OF or k["precision"] not in PREC_OF:
            print("skip", case["name"], flush=True)
            continue
        cfg = dict(batch=k["batch"], prec=PREC_OF[k["precision"]], ckpt=k["checkpointing"] == "full",
                   opt=OPT_OF[k["optimizer"]], accum=k["grad_accum"])
        rec = dict(name=case["name"], knobs=k, predicted=case["predicted"], budget_bytes=case["budget_bytes"])
        tf32 = k["precision"] == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        H.reset()
        if CUDA:
            free, total = torch.cuda.mem_get_info()
            outside = (total - free) - torch.cuda.memory_reserved()
            cap = case["budget_bytes"] - outside
            rec["outside_pytorch_bytes"] = outside
            rec["allocator_cap_bytes"] = cap
            torch.cuda.set_per_process_memory_fraction(cap / total)
        try:
            m = H.run_config(case["name"], plan_workload(case), cfg)
            rec["fits"] = True
            rec.update({f: m.get(f) for f in ("peak_alloc", "peak_reserved", "step_time_s", "a0", "num_alloc_retries")})
        except torch.OutOfMemoryError as e:
            rec["fits"] = False
            rec["error"] = str(e)[:400]
            H.reset()
        except Exception as e:
            traceback.print_exc()
            rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            H.reset()
        if CUDA:
            torch.cuda.set_per_process_memory_fraction(1.0)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
        out.write(json.dumps(rec) + "\n")
        out.flush()
        pr = case["predicted"]
        print("plan", case["name"], "fits" if rec.get("fits") else "NO", "alloc", H.mib(rec.get("peak_alloc") or 0),
              "pred", H.mib(pr["peak_allocated_bytes"]), "res", H.mib(rec.get("peak_reserved") or 0), "pred",
              H.mib(pr["peak_reserved_bytes"]), "t", rec.get("step_time_s"), "pred", round(pr["step_time_s"], 4),
              rec.get("error", "")[:120], flush=True)


def main():
    meta = dict(torch=torch.__version__, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if CUDA:
        p = torch.cuda.get_device_properties(0)
        meta.update(gpu=p.name, total_memory=p.total_memory, capability=f"{p.major}.{p.minor}")
    try:
        import transformers, timm, torchvision
        meta.update(transformers=transformers.__version__, timm=timm.__version__, torchvision=torchvision.__version__)
    except Exception:
        pass
    print(json.dumps(meta), flush=True)
    json.dump(meta, open(os.path.join(A.out, "meta.json"), "w"))
    only = set(A.only.split(",")) if A.only else None
    parts = A.parts.split(",")
    if "opprof" in parts:
        with open(os.path.join(A.out, "opprof_summary.jsonl"), "a") as f:
            cases = list(OPPROF.items()) + [(n, (f(), c)) for n, (f, c) in OPPROF_HOLDOUT.items()
                                             if only and n in only]
            for name, (w, cfg) in cases:
                if (only and name not in only) or left() < 30:
                    continue
                t = time.time()
                try:
                    s = opprof(name, w, dict(cfg, opt="adamw"))
                except Exception as e:
                    traceback.print_exc()
                    s = dict(name=name, error=f"{type(e).__name__}: {str(e)[:500]}")
                    H.reset()
                s["seconds"] = round(time.time() - t, 1)
                f.write(json.dumps(s) + "\n")
                f.flush()
                print("opprof", json.dumps(s), flush=True)
    if "rows" in parts:
        with open(os.path.join(A.out, "measurements.jsonl"), "a") as f:
            for wname, w, base, cfgs in rows():
                for cfg in cfgs:
                    if (only and wname not in only) or left() < 20:
                        print("skip", wname, cfg, flush=True)
                        continue
                    try:
                        rec = H.run_config(wname, w, cfg)
                    except Exception as e:
                        traceback.print_exc()
                        rec = dict(workload=wname, **cfg, error=f"{type(e).__name__}: {str(e)[:500]}")
                        H.reset()
                    rec = {"workload": wname, **({"estimate_args": estimate_args(base, cfg)} if base else {}),
                           **{k: v for k, v in rec.items() if k != "workload"}}
                    rec["gpu"] = meta.get("gpu")
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    print(wname, cfg, "alloc", H.mib(rec.get("peak_alloc", 0)), "res", H.mib(rec.get("peak_reserved", 0)),
                          "t", rec.get("step_time_s"), rec.get("error", "")[:200], flush=True)
    if "trace" in parts:
        trace_rows(only)
    if "plancheck" in parts:
        plancheck()
    if "history" in parts:
        history(only)
    print("total s", round(time.time() - T0, 1), flush=True)


if __name__ == "__main__":
    main()
