"""oomdoc_probe: record one PyTorch training step on the CPU for ``oomdoc estimate --model trace:PATH``.

    import oomdoc_probe
    # step_for_batch(b): one training step (forward, backward, optimizer.step, zero_grad) at micro-batch b
    oomdoc_probe.trace(step_for_batch, "model.trace.json", batch_sizes=(1, 2))

The step is run on the CPU with real tensors, ``len(batch_sizes) + 1`` times: once at the first batch
size as the *first* step (the optimizer creates its state lazily there), then once per batch size as
a *steady* step. Nothing of the model or its results is changed; while tracing, ``torch.autocast("cuda")``
is emulated on the CPU with CUDA's op lists, and optimizers left at ``foreach=None`` run their
foreach implementation (what they do on CUDA). The format is described in docs/trace-format.md.
"""
import gc
import json
import os
import sys
import warnings

import torch
import torch.optim.optimizer as _optim

from ._autocast import _Patch
import torch.nn.functional as F

from ._recorder import FORWARD, OTHER, DispatchRecorder, Recorder, Run, linear_wrapper, sdpa_wrapper

__version__ = "0.1.3"
FORMAT = "oomdoc-trace"
FORMAT_VERSION = 1

__all__ = ["trace", "FORMAT", "FORMAT_VERSION", "__version__"]


def _find(kind):
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for o in gc.get_objects():
            try:
                if isinstance(o, kind):
                    found.append(o)
            except Exception:
                pass
    return found


def _roots(modules):
    children = set()
    for m in modules:
        for c in m.children():
            children.add(id(c))
    return [m for m in modules if id(m) not in children]


def _apply_order(module, prefix, out):
    """Parameters and buffers in the order ``module.to(device)`` moves them (Module._apply:
    children first, then own parameters, then own buffers)."""
    for name, child in module.named_children():
        _apply_order(child, prefix + name + ".", out)
    for name, p in module._parameters.items():
        if p is not None:
            out.append(("param", prefix + name, p))
    for name, b in module._buffers.items():
        if b is not None:
            out.append(("buffer", prefix + name, b))


def trace(step_for_batch, path, batch_sizes=(1, 2), model=None, optimizer=None, gc_collect=True,
          fast_low_precision=True):
    """Runs ``step_for_batch(b)`` and writes the trace to ``path``; returns the trace as a dict.

    model / optimizer: found among live objects when not given (all root modules and optimizers).
    fast_low_precision: compute bf16 / fp16 matrix products and convolutions in fp32 and round the
    result (CPU kernels for these dtypes are several times slower than fp32 on most CPUs); the
    recorded storages are the same either way, only the values' rounding can differ.
    """
    if len(batch_sizes) < 1:
        raise ValueError("batch_sizes needs at least one batch size")
    models = [model] if isinstance(model, torch.nn.Module) else (list(model) if model else None)
    optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else (
        list(optimizer) if optimizer else None)
    if models is None:
        models = _roots(_find(torch.nn.Module))
    if optimizers is None:
        optimizers = _find(torch.optim.Optimizer)

    rec = Recorder()
    names = {}
    for m in models:
        for n, sub in m.named_modules():
            names.setdefault(id(sub), n)
    plan = [("first", batch_sizes[0])] + [("steady", b) for b in batch_sizes]
    runs = []

    # foreach=None resolves to the foreach implementation on CUDA and to the for-loop on the CPU.
    forced = []
    for o in optimizers:
        for g in o.param_groups:
            if "foreach" in g and g["foreach"] is None and not g.get("fused"):
                g["foreach"] = True
                forced.append(g)

    def pre_fwd(mod, args):
        rec.module_stack.append(names.get(id(mod), type(mod).__name__))

    def post_fwd(mod, args, out):
        if rec.module_stack:
            rec.module_stack.pop()

    def opt_pre(opt, args, kwargs):
        rec.in_optimizer += 1
        # gradients exist now (zero_grad(set_to_none=True) frees them after the step)
        if rec.run is not None:
            for g in opt.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        i = rec.run.live.get(rec.key(p.grad.untyped_storage()))
                        if i is not None:
                            rec.run.grads.add(i)

    def opt_post(opt, args, kwargs):
        rec.in_optimizer -= 1
        rec.phase = OTHER

    def pack(t):
        rec.mark_saved(t)
        return t

    try:
        # always_call: a forward that raises still pops its module. Non-reentrant checkpointing
        # stops its recomputation by raising once it has what backward needs; without this the
        # aborted modules would stay on the stack and name every later backward op.
        post_handle = torch.nn.modules.module.register_module_forward_hook(post_fwd, always_call=True)
    except TypeError:  # torch < 2.1
        post_handle = torch.nn.modules.module.register_module_forward_hook(post_fwd)
    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(pre_fwd),
        post_handle,
        _optim.register_optimizer_step_pre_hook(opt_pre),
        _optim.register_optimizer_step_post_hook(opt_post),
    ]
    orig_sdpa, orig_linear = F.scaled_dot_product_attention, F.linear
    F.scaled_dot_product_attention = sdpa_wrapper(rec, orig_sdpa)
    F.linear = linear_wrapper(rec, orig_linear)
    try:
        with _Patch(rec):
            for name, b in plan:
                if gc_collect:
                    gc.collect()
                run = Run(name, b, rec.strings)
                rec.run = run
                rec.phase = FORWARD
                rec.module_stack.clear()
                rec.node_region.clear()
                rec.matmul_seen = rec.matmul_seen if name != "first" else False
                order = []
                for m in models:
                    _apply_order(m, "", order)
                for kind, n, t in order:
                    rec.register_persistent(t, kind, n)
                for kind, n, t in order:
                    if kind == "param" and t.grad is not None:
                        rec.register_persistent(t.grad, "grad", n)
                for oi, o in enumerate(optimizers):
                    for p, st in o.state.items():
                        for k, v in st.items():
                            if isinstance(v, torch.Tensor):
                                rec.register_persistent(v, "opt_state", "optimizer%d.%s" % (oi, k))
                with DispatchRecorder(rec, fast_low_precision), \
                        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    step_for_batch(b)
                    if gc_collect:
                        gc.collect()
                # categories of what is alive after the step
                cats = {}
                for kind, n, t in order:
                    for tt, kk in ((t, kind), (t.grad if kind == "param" else None, "grad")):
                        if tt is None:
                            continue
                        st = tt.untyped_storage()
                        i = run.live.get(rec.key(st))
                        if i is not None:
                            cats[i] = kk
                for o in optimizers:
                    for p, st in o.state.items():
                        for v in st.values():
                            if isinstance(v, torch.Tensor):
                                i = run.live.get(rec.key(v.untyped_storage()))
                                if i is not None:
                                    cats[i] = "opt_state"
                for i in run.grads:
                    cats.setdefault(i, "grad")
                rec.run = None
                runs.append({
                    "name": name,
                    "batch": b,
                    "persistent": run.persistent,
                    "events": run.events,
                    "saved": sorted(run.saved),
                    "categories": {str(k): v for k, v in sorted(cats.items())},
                    "alive_after": sorted(run.live.values()),
                    "regions": run.regions,
                    "untraced": [{"op": k[0], "reason": k[1], "count": c} for k, c in sorted(run.untraced.items())],
                })
    finally:
        F.scaled_dot_product_attention, F.linear = orig_sdpa, orig_linear
        for h in handles:
            h.remove()
        for g in forced:
            g["foreach"] = None
        rec.run = None

    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "producer": "oomdoc_probe " + __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": "cpu",
        "autocast": sorted(rec.autocast_dtypes),
        "optimizers": [type(o).__name__ for o in optimizers],
        "foreach_forced": bool(forced),
        "strings": rec.string_list,
        "runs": runs,
    }
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)
    untraced = {u["op"] + " (" + u["reason"] + ")" for r in runs for u in r["untraced"]}
    if untraced:
        print("oomdoc_probe: could not trace: " + "; ".join(sorted(untraced)), file=sys.stderr)
    return doc
