#!/usr/bin/env python3
"""Trace the calibration workloads on the CPU with oomdoc_probe (one trace per measured configuration).

Usage: python scripts/trace-calibration.py CALIBRATION_DIR OUTDIR [--only name,...] [--list]
CALIBRATION_DIR holds harness.py / variants.py / navdp_like.py / measurements-h100-torch2.11.jsonl.
Needs torch, transformers, timm, torchvision. Writes OUTDIR/<name>.trace.json.gz for every
distinct (workload, precision, checkpointing, optimizer, variant) of the measurement file; the
batch size and gradient accumulation are not part of the trace (they are estimate knobs).
"""
import argparse, json, os, sys, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import oomdoc_probe  # noqa: E402
from trace_step import trace_gz, training_step  # noqa: E402


# held-out timm workloads of scripts/gpu-measure.py
TIMM = {"convnext_tiny_224": "convnext_tiny", "swin_tiny_224": "swin_tiny_patch4_window7_224",
        "efficientnet_b0_224": "efficientnet_b0"}


def trace_name(row):
    v = row.get("variant") or {}
    parts = [row["workload"], row["prec"], "ckpt" if row.get("ckpt") else "nockpt", row.get("opt", "adamw")]
    parts += sorted(k for k, on in v.items() if on)
    return "_".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("calibration")
    ap.add_argument("out")
    ap.add_argument("--only", default="")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--measurements", default="", help="rows to trace (default: the calibration file)")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.calibration))
    import harness as H
    H.DEV = "cpu"
    H.setup_workloads()
    import navdp_like as N
    import navdp_model as M

    rows = [json.loads(l) for l in open(a.measurements or os.path.join(a.calibration, "measurements-h100-torch2.11.jsonl"))]
    todo = {}
    for r in rows:
        if r.get("capped") or r.get("error"):
            continue
        todo.setdefault(trace_name(r), r)
    os.makedirs(a.out, exist_ok=True)
    for name, r in todo.items():
        if a.only and name not in a.only.split(","):
            continue
        if a.list:
            print(name)
            continue
        path = os.path.join(a.out, name + ".trace.json")
        t0 = time.time()
        torch.manual_seed(0)
        wname = r["workload"]
        v = r.get("variant") or {}
        if wname in TIMM:  # held-out timm models (scripts/gpu-measure.py)
            import timm
            model, info = timm.create_model(TIMM[wname], pretrained=False), {}
            make_batch, loss_fn = (lambda B, V: H.img_batch(B, 224)), H.img_loss
        elif wname in H.WORKLOADS and not v:
            w = H.WORKLOADS[wname]
            model, info = w["build"](r["ckpt"])
            make_batch, loss_fn = w["make_batch"], w["loss"]
        else:  # navdp variants (variants.py); "navdp_like" is also a harness workload, without them
            na = N._args(bool(v.get("ckpt_dec")), False)
            na.sdpa = bool(v.get("sdpa"))
            model = M.NavDPLike(na)
            model.rgb_model.ckpt = model.depth_model.ckpt = bool(v.get("ckpt_vit"))
            info = {}
            make_batch, loss_fn = (lambda B, V: N.make_batch(B, "cpu")), N.loss_fn
        model.train()
        if r["prec"] == "bf16_pure":
            model = model.to(torch.bfloat16)
        V = info.get("vocab", 1000)
        ps = [p for p in model.parameters() if p.requires_grad]
        opt = r.get("opt", "adamw")
        if opt == "adamw":
            o = torch.optim.AdamW(ps, lr=1e-4)
        elif opt == "adamw_fused":
            o = torch.optim.AdamW(ps, lr=1e-4, fused=True)
        else:
            o = torch.optim.SGD(ps, lr=1e-3, momentum=0.9)
        prec = r["prec"]

        step = training_step(model, lambda B: make_batch(B, V), loss_fn, o, prec)
        trace_gz(oomdoc_probe, step, path, model, o)
        print(f"{name}: {time.time() - t0:.1f} s, {os.path.getsize(path + '.gz')} bytes", flush=True)
        del model, o


if __name__ == "__main__":
    main()
