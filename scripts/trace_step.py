"""The training step both tracing scripts hand to oomdoc_probe (trace-calibration.py, gpu-measure.py)."""
import gzip
import os
import shutil

import torch


def training_step(model, make_batch, loss_fn, opt, prec):
    """step(B): forward at micro-batch B (under torch.autocast("cuda") for the mixed precisions,
    which the probe emulates on the CPU with CUDA's op lists), backward, optimizer step, zero_grad."""

    def step(B):
        batch = make_batch(B)
        if prec in ("amp_bf16", "amp_fp16"):
            dt = torch.bfloat16 if prec == "amp_bf16" else torch.float16
            with torch.autocast("cuda", dtype=dt):
                loss = loss_fn(model, batch)
        else:
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def trace_gz(probe, step, path, model, opt):
    """Traces `step` at batch sizes 1 and 2 into path + ".gz"."""
    probe.trace(step, path, batch_sizes=(1, 2), model=model, optimizer=opt)
    with open(path, "rb") as fi, gzip.open(path + ".gz", "wb", compresslevel=9) as fo:
        shutil.copyfileobj(fi, fo)
    os.remove(path)
