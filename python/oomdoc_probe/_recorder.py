"""The recorder: watches one training step and writes down every tensor storage allocated and
freed. Observes only: it never changes tensors, modules or the autograd graph it sees.

Mechanisms (all PyTorch's own):
- a TorchDispatchMode sees every aten op below autograd (forward, backward, optimizer), with
  ``torch._C._current_autograd_node()`` telling the backward node that runs it;
- new storages are found on op outputs (``untyped_storage()``, size = ``nbytes()``), and a
  ``weakref.finalize`` on the storage records when it is freed;
- a TorchFunctionMode marks ``scaled_dot_product_attention`` calls as regions (their arguments,
  their outputs, and the autograd nodes created inside, so that backward ops can be attributed),
  so the replay can apply what the CUDA kernels keep instead of what the CPU math path keeps;
- ``saved_tensors_hooks`` mark the storages autograd saves for backward;
- global module forward pre/post hooks give the module path;
- global optimizer step pre/post hooks give the optimizer phase.
"""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Phase codes in the trace.
FORWARD, BACKWARD, OPTIMIZER, OTHER = "f", "b", "o", "x"

_CONV_OPS = ("aten.convolution.", "aten.convolution_backward.", "aten._convolution.")
_MATMUL_OPS = ("aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.", "aten._scaled_dot_product")
# Sums whose CUDA kernel may take a staging buffer (bias / LayerScale / norm-weight gradients).
_SUM_OPS = ("aten.sum.dim_IntList",)


def _storage(t):
    try:
        if t.is_sparse or t.layout != torch.strided:
            return None
        return t.untyped_storage()
    except Exception:
        return None


class Run:
    """Everything recorded for one call of the step function."""

    def __init__(self, name, batch, strings):
        self.name = name
        self.batch = batch
        self.strings = strings
        self.events = []
        self.persistent = []
        self.untraced = {}
        self.next_id = 0
        self.live = {}  # storage key -> id
        self.saved = set()
        self.categories = {}
        self.regions = []
        self.grads = set()


class Recorder:
    def __init__(self):
        self.strings = {}
        self.string_list = []
        self.run = None
        self.phase = FORWARD
        self.module_stack = []
        self.module_names = {}
        self.region_stack = []
        self.node_region = {}
        self.autocast_dtypes = set()
        self.seen_backward = False
        self.in_optimizer = 0
        self.matmul_seen = False
        self.in_linear = 0

    # ------------------------------------------------------------ strings
    def s(self, text):
        i = self.strings.get(text)
        if i is None:
            i = len(self.string_list)
            self.strings[text] = i
            self.string_list.append(text)
        return i

    # ------------------------------------------------------------ storages
    @staticmethod
    def key(st):
        return (st.data_ptr(), st.nbytes()) if st.data_ptr() != 0 else ("obj", id(st))

    def new_id(self):
        r = self.run
        i = r.next_id
        r.next_id += 1
        return i

    def register_persistent(self, t, kind, name):
        """A storage alive when the run starts (parameter, buffer, gradient, optimizer state)."""
        st = _storage(t)
        if st is None or st.nbytes() == 0:
            return
        k = self.key(st)
        r = self.run
        if k in r.live:
            return
        i = self.new_id()
        r.live[k] = i
        r.persistent.append([i, st.nbytes(), self.s(str(t.dtype).replace("torch.", "")), list(t.shape),
                             kind, self.s(name)])
        self._watch(st, k, i)

    def _watch(self, st, k, i):
        run = self.run

        def freed(rec=self, run=run, k=k, i=i):
            if run.live.get(k) == i:
                del run.live[k]
                if rec.run is run:
                    region = rec.region_stack[-1][0] if rec.region_stack else rec._backward_region()
                    run.events.append(["f", i, rec.current_phase(), region])

        try:
            weakref.finalize(st, freed)
        except TypeError:
            self.untraced_op("<storage without weakref>", "free time unknown")

    def current_phase(self):
        if self.in_optimizer:
            return OPTIMIZER
        if torch._C._current_autograd_node() is not None:
            return BACKWARD
        return self.phase

    def _backward_region(self):
        node = torch._C._current_autograd_node()
        if node is None:
            return -1
        return self.node_region.get(_node_key(node), -1)

    def untraced_op(self, op, reason):
        u = self.run.untraced
        key = (op, reason)
        u[key] = u.get(key, 0) + 1

    def on_outputs(self, func, out, inputs=()):
        run = self.run
        if run is None:
            return
        name = str(func)
        phase = self.current_phase()
        if phase == BACKWARD:
            self.seen_backward = True
        region = self.region_stack[-1][0] if self.region_stack else self._backward_region()
        module = self.s(self.module_stack[-1] if self.module_stack else "")
        op = self.s(name)
        flat = []
        stack = [out]
        while stack:
            o = stack.pop()
            if isinstance(o, torch.Tensor):
                flat.append(o)
            elif isinstance(o, (list, tuple)):
                stack.extend(reversed(o))
        for t in flat:
            st = _storage(t)
            if st is None:
                self.untraced_op(name, "non-strided output (size unknown)")
                continue
            k = self.key(st)
            if k in run.live or k in inputs or st.nbytes() == 0:
                continue
            i = self.new_id()
            run.live[k] = i
            run.events.append(["a", i, st.nbytes(), self.s(str(t.dtype).replace("torch.", "")),
                               list(t.shape), op, module, phase, region])
            self._watch(st, k, i)
            if self.region_stack:
                self.region_stack[-1][1].append(i)

    def on_call(self, func, args):
        """Ops whose CUDA kernels take memory the CPU run does not show: record their arguments."""
        name = str(func)
        if name.startswith(_CONV_OPS):
            shapes = [list(a.shape) if isinstance(a, torch.Tensor) else None for a in args[:3]]
            dt = next((str(a.dtype).replace("torch.", "") for a in args if isinstance(a, torch.Tensor)), "")
            extra = [a if isinstance(a, (int, bool, list, tuple)) else None for a in args[3:9]]
            self.run.events.append(["c", self.s(name), {"shapes": shapes, "dtype": dt, "args": _jsonable(extra)},
                                    self.current_phase()])
        elif name.startswith(_SUM_OPS) and args and isinstance(args[0], torch.Tensor) \
                and args[0].is_floating_point():
            x = args[0]
            dims = args[1] if len(args) > 1 else None
            self.run.events.append(["c", self.s(name), {
                "shapes": [list(x.shape)], "strides": [list(x.stride())],
                "dtype": str(x.dtype).replace("torch.", ""),
                "dims": _jsonable(list(dims) if isinstance(dims, (list, tuple)) else dims)},
                self.current_phase()])
        elif not self.matmul_seen and name.startswith(_MATMUL_OPS):
            self.matmul_seen = True
            self.run.events.append(["c", self.s(name), {"first_matmul": True}, self.current_phase()])

    def bias_add_in_place(self, args, out):
        """``F.linear`` on an input it cannot flatten (not contiguous: a sequence-first view, as
        ``F.multi_head_attention_forward`` makes) runs ``matmul`` and adds the bias in place
        (``output.add_(bias)``, aten/src/ATen/native/Linear.cpp), but out of place while a dispatch
        mode is active (``isTensorSubclassLike`` is true then, for composite compliance). Record
        what CUDA runs: the product's storage takes the sum. True if recorded so."""
        run = self.run
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or self.region_stack:
            return False
        src, dst = _storage(x), _storage(out)
        if src is None or dst is None or src.nbytes() != dst.nbytes() or x.dtype != out.dtype:
            return False
        ks = self.key(src)
        i = run.live.get(ks)
        last = next((e for e in reversed(run.events) if e[0] == "a"), None)
        if i is None or last is None or last[1] != i or \
                self.string_list[last[5]] not in ("aten.mm.default", "aten.bmm.default"):
            return False
        kd = self.key(dst)
        if kd in run.live:
            return False
        del run.live[ks]  # the product's own free is no longer recorded
        run.live[kd] = i
        self._watch(dst, kd, i)
        return True

    def mark_saved(self, t):
        st = _storage(t) if isinstance(t, torch.Tensor) else None
        if st is not None and self.run is not None:
            i = self.run.live.get(self.key(st))
            if i is not None:
                self.run.saved.add(i)


def _node_key(node):
    """A key for an autograd node that does not keep it alive. Holding the node itself would keep
    its saved tensors alive: the graph that non-reentrant checkpointing builds while recomputing
    is never run backward and dies at once in a real run, so a reference to it leaks every
    recomputed tensor into the trace. Sequence numbers are unique per thread, and the probe's
    step runs forward and the CPU backward on one thread."""
    seq = getattr(node, "_sequence_nr", None)
    if seq is None:  # torch without Node._sequence_nr: the node itself (may keep it alive)
        return node
    return (seq(), node.name())


def _jsonable(x):
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (int, float, bool, str)) or x is None:
        return x
    return None


# Matrix products and convolutions whose CPU kernels for bf16 / fp16 are 4-20x slower than fp32
# on CPUs without bf16 instructions (measured on an AMD EPYC: bf16 linear 4x, conv2d 19x).
_FAST_LOWP_OPS = ("aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.baddbmm.default",
                  "aten.convolution.default", "aten.convolution_backward.default")
_LOWP = (torch.bfloat16, torch.float16)


def _in_fp32(func, args, kwargs):
    """``func`` computed in fp32 and rounded to the inputs' low precision, or None where that does not
    apply (not all floating inputs CPU tensors of one low-precision dtype). CUDA's kernels also
    accumulate these in fp32. The fp32 temporaries are made inside the dispatch handler, where the
    recorder does not see them: the recorded outputs are the same storages, shapes and dtypes."""
    dtype = None
    for a in list(args) + list(kwargs.values()):
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                if t.device.type != "cpu" or t.dtype not in _LOWP or dtype not in (None, t.dtype):
                    return None
                dtype = t.dtype
    if dtype is None:
        return None

    def up(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.float()
        if isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in a):
            return type(a)(up(t) for t in a)
        return a

    out = func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
    if isinstance(out, torch.Tensor):
        return out.to(dtype)
    return type(out)(o.to(dtype) if isinstance(o, torch.Tensor) else o for o in out)


class DispatchRecorder(TorchDispatchMode):
    def __init__(self, rec, fast_low_precision=True):
        super().__init__()
        self.rec = rec
        self.fast = fast_low_precision

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        rec.on_call(func, args)
        out = None
        if self.fast and str(func) in _FAST_LOWP_OPS:  # .default overloads: no out= argument
            out = _in_fp32(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if rec.run is not None and rec.in_linear and func is torch.ops.aten.add.Tensor \
                and rec.bias_add_in_place(args, out):
            return out
        if rec.run is not None:
            inputs = set()
            stack = [args, kwargs]
            while stack:
                a = stack.pop()
                if isinstance(a, torch.Tensor):
                    st = _storage(a)
                    if st is not None:
                        inputs.add(rec.key(st))
                elif isinstance(a, (list, tuple)):
                    stack.extend(a)
                elif isinstance(a, dict):
                    stack.extend(a.values())
            rec.on_outputs(func, out, inputs)
        return out


def linear_wrapper(rec, orig):
    """Wraps ``torch.nn.functional.linear`` while tracing (``nn.Linear`` and
    ``F.multi_head_attention_forward`` look it up at call time) to tell the recorder that the
    ops it sees belong to a linear layer (``Recorder.bias_add_in_place``)."""

    def linear(*args, **kwargs):
        rec.in_linear += 1
        try:
            return orig(*args, **kwargs)
        finally:
            rec.in_linear -= 1

    linear.__doc__ = orig.__doc__
    return linear


def sdpa_wrapper(rec, orig):
    """Wraps ``torch.nn.functional.scaled_dot_product_attention`` while tracing (also reached from
    ``F.multi_head_attention_forward``, which looks it up at call time): marks the call as a region
    with its arguments, its outputs and the autograd nodes created inside it."""

    def scaled_dot_product_attention(*args, **kwargs):
        if rec.run is None:
            return orig(*args, **kwargs)
        run = rec.run
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
        a = dict(zip(names, args))
        a.update(kwargs)
        q, k, v, mask = a.get("query"), a.get("key"), a.get("value"), a.get("attn_mask")
        rid = len(run.regions)
        info = {"id": rid, "kind": "sdpa", "q": list(q.shape), "q_stride": list(q.stride()),
                "k": list(k.shape), "v": list(v.shape),
                "dtype": str(q.dtype).replace("torch.", ""), "dropout_p": float(a.get("dropout_p") or 0.0),
                "is_causal": bool(a.get("is_causal", False)), "has_mask": mask is not None,
                "mask_requires_grad": torch.is_grad_enabled() and isinstance(mask, torch.Tensor)
                and mask.requires_grad,
                "requires_grad": torch.is_grad_enabled() and any(
                    isinstance(t, torch.Tensor) and t.requires_grad for t in (q, k, v)),
                "phase": rec.current_phase(), "outputs": []}
        run.regions.append(info)
        rec.region_stack.append((rid, []))
        try:
            out = orig(*args, **kwargs)
        finally:
            rec.region_stack.pop()
        outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
        for o in outs:
            st = _storage(o)
            if st is not None:
                i = run.live.get(rec.key(st))
                if i is not None:
                    info["outputs"].append(i)
        # storages of q, k, v, mask: the CUDA kernels keep q, k, v for backward
        info["inputs"] = []
        for t in (q, k, v, mask):
            st = _storage(t) if isinstance(t, torch.Tensor) else None
            i = run.live.get(rec.key(st)) if st is not None else None
            if i is not None and i not in info["inputs"]:
                info["inputs"].append(i)
        # autograd nodes created inside the region: walk back from the outputs to the inputs' nodes
        stop = {t.grad_fn for t in (q, k, v, mask) if isinstance(t, torch.Tensor) and t.grad_fn is not None}
        todo = [o.grad_fn for o in outs if o.grad_fn is not None]
        seen = set()
        while todo:
            n = todo.pop()
            if n is None or n in seen or n in stop or type(n).__name__ == "AccumulateGrad":
                continue
            seen.add(n)
            rec.node_region[_node_key(n)] = rid
            for nxt, _ in n.next_functions:
                todo.append(nxt)
        return out

    scaled_dot_product_attention.__doc__ = orig.__doc__
    return scaled_dot_product_attention
