"""Emulation of CUDA autocast on the CPU.

On a machine without CUDA, ``torch.autocast("cuda", ...)`` disables itself, and CPU autocast has
other op lists than CUDA autocast (on CUDA, layer_norm and softmax run in float32; on the CPU in
the low-precision dtype). While tracing, ``CudaAutocastMode`` applies CUDA's lists at the
``torch.nn.functional`` / ``torch`` / ``Tensor`` method level, casting arguments the way
``cached_cast`` does in aten/src/ATen/autocast_mode.cpp (including the per-region cache of casted
parameters). The op lists follow autocast_mode.cpp's KERNEL_CUDA registrations (lower_precision_fp,
fp32, fp32_set_opt_dtype) as they apply at the Python API level.
"""
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

T = torch.Tensor


def _fns(*cands):
    return {c for c in cands if c is not None}


def _get(mod, name):
    return getattr(mod, name, None)


# Ops that autocast runs in the low-precision dtype (autocast_mode.cpp, lower_precision_fp, CUDA).
LOWER = _fns(
    F.linear, torch.matmul, T.matmul, T.__matmul__, _get(T, "__rmatmul__"), torch.mm, T.mm,
    torch.bmm, T.bmm, torch.baddbmm, T.baddbmm, torch.addmm, T.addmm, torch.addbmm, T.addbmm,
    torch.addmv, torch.mv, T.mv, torch.einsum, torch.chain_matmul, torch.addr,
    F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d, torch.convolution,
    F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.prelu, torch.prelu,
    F.scaled_dot_product_attention, _get(torch.linalg, "vecdot"), _get(torch.linalg, "multi_dot"),
)
# Python functions that are not aten ops: real autocast sees only the ops inside them, so their bodies
# run under the mode (casting each inner op) instead of having their arguments cast at the entry.
# Casting at the entry would also break identities the body tests: `F.multi_head_attention_forward`
# projects key and value with one packed matrix product when `key is value` (cross-attention), and
# two separately casted copies of the same tensor take the three-product path instead.
COMPOSITE = _fns(F.multi_head_attention_forward)
# Ops that autocast runs in float32 (fp32 and fp32_set_opt_dtype lists, CUDA).
FP32 = _fns(
    F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm,
    F.softmax, torch.softmax, T.softmax, F.log_softmax, torch.log_softmax, T.log_softmax,
    F.softmin, F.nll_loss, F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss,
    F.kl_div, F.binary_cross_entropy_with_logits, F.poisson_nll_loss, F.cosine_embedding_loss,
    F.hinge_embedding_loss, F.margin_ranking_loss, F.multilabel_margin_loss, F.soft_margin_loss,
    F.triplet_margin_loss, F.multi_margin_loss, F.cosine_similarity, F.pdist, torch.cdist, torch.dist,
    F.softplus, F.normalize, torch.norm, T.norm, torch.renorm, torch.logsumexp, T.logsumexp,
    torch.exp, T.exp, torch.expm1, torch.log, T.log, torch.log10, torch.log2, torch.log1p, T.log1p,
    torch.reciprocal, T.reciprocal, torch.rsqrt, T.rsqrt, torch.pow, T.pow, T.__pow__, T.__rpow__,
    torch.acos, torch.asin, torch.cosh, torch.sinh, torch.tan, torch.erfinv,
    torch.cumsum, T.cumsum, torch.cumprod, T.cumprod, torch.prod, T.prod,
    F.interpolate,
)


# fp32_set_opt_dtype: autocast passes dtype=float32 unless the call already gives a dtype, which it
# keeps (autocast_mode.cpp, `set_opt_dtype`).
SET_OPT_DTYPE = _fns(
    F.softmax, torch.softmax, T.softmax, F.log_softmax, torch.log_softmax, T.log_softmax,
    torch.cumsum, T.cumsum, torch.cumprod, T.cumprod, torch.prod, T.prod,
)


def _cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                   reduction="mean", label_smoothing=0.0):
    """F.cross_entropy as CUDA autocast runs it: aten's cross_entropy_loss calls
    log_softmax(input, dim, dtype=input.dtype), which autocast leaves in the input's dtype, then
    nll_loss, which autocast runs in float32 (so it keeps a float32 copy of the log-probabilities
    for backward)."""
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    dim = 0 if input.dim() == 1 else 1
    lsm = F.log_softmax(input, dim, dtype=input.dtype)
    if weight is not None and _eligible(weight):
        weight = weight.float()
    return F.nll_loss(lsm.float(), target, weight, ignore_index=ignore_index, reduction=reduction)


def _eligible(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class CudaAutocastMode(TorchFunctionMode):
    """Casts arguments as CUDA autocast would. One instance per outermost autocast region."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype
        self.cache = {}

    def _cast(self, x, dtype):
        if _eligible(x) and x.dtype != dtype:
            # cached_cast: casts of leaf tensors that require grad (weights) are cached per region
            if x.is_leaf and x.requires_grad and torch.is_grad_enabled():
                key = (id(x), dtype)
                hit = self.cache.get(key)
                if hit is not None and hit[0]() is x:
                    return hit[1]
                y = x.to(dtype)
                import weakref
                self.cache[key] = (weakref.ref(x), y)
                return y
            return x.to(dtype)
        if isinstance(x, (list, tuple)):
            return type(x)(self._cast(v, dtype) for v in x)
        return x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.cross_entropy:
            target_arg = args[1] if len(args) > 1 else kwargs.get("target")
            smoothing = kwargs.get("label_smoothing", args[7] if len(args) > 7 else 0.0)
            x = args[0] if args else kwargs.get("input")
            if (_eligible(x) and x.dtype != torch.float32 and smoothing == 0.0
                    and isinstance(target_arg, torch.Tensor) and not target_arg.is_floating_point()):
                return _cross_entropy(*args, **kwargs)
            # float32 logits, or probabilities / label smoothing as targets: as before
            args, kwargs = self._cast_all(args, kwargs, torch.float32)
            return func(*args, **kwargs)
        if func in SET_OPT_DTYPE:
            dtype = kwargs.get("dtype")
            if dtype is None and len(args) > 2 and isinstance(args[2], torch.dtype):
                dtype = args[2]
            if dtype is not None:
                return func(*args, **kwargs)
        if func in COMPOSITE:
            return self._run_inside(func, args, kwargs)
        if func in LOWER:
            target = self.dtype
        elif func in FP32:
            target = torch.float32
        else:
            return func(*args, **kwargs)
        args, kwargs = self._cast_all(args, kwargs, target)
        return func(*args, **kwargs)

    def _cast_all(self, args, kwargs, dtype):
        """Casts in the order CUDA builds of PyTorch do: autocast's wrapper casts the arguments in
        one pack expansion (``cached_cast(..., args, ...)...``), which GCC evaluates last to first
        (an H100 allocator history of ``F.linear`` shows the bias cast, then the weight, then the
        input). The order decides where the copies land in the caching allocator."""
        kw = {k: self._cast(v, dtype) for k, v in reversed(list(kwargs.items()))}
        cast = [self._cast(a, dtype) for a in reversed(args)]
        return tuple(reversed(cast)), {k: kw[k] for k in kwargs}

    def _run_inside(self, func, args, kwargs):
        """Runs a Python function with this mode active for the ops it calls. The mode is off while
        its handler runs, so it is entered again; the function's own ``has_torch_function`` test
        (a global of its module) is answered False once, or it would come back here."""
        g = func.__globals__
        orig = g["has_torch_function"]

        def once(*a, **k):
            g["has_torch_function"] = orig
            return False

        g["has_torch_function"] = once
        try:
            with self:
                return func(*args, **kwargs)
        finally:
            g["has_torch_function"] = orig


class _Patch:
    """While tracing: make ``torch.autocast("cuda", ...)`` (and ``torch.cuda.amp.autocast``) emulate
    CUDA autocast on the CPU. Restored when tracing ends."""

    def __init__(self, recorder):
        self.recorder = recorder
        self.cls = torch.amp.autocast_mode.autocast
        self.depth = 0
        self.mode = None

    def __enter__(self):
        cls = self.cls
        self.orig_init, self.orig_enter, self.orig_exit = cls.__init__, cls.__enter__, cls.__exit__
        patch = self

        def init(s, device_type, dtype=None, enabled=True, cache_enabled=None):
            # Emulated whether or not this machine has a GPU: the traced step runs on the CPU,
            # where a real CUDA autocast would leave every op in fp32.
            s._oomdoc_emulate = device_type == "cuda"
            if s._oomdoc_emulate:
                s._oomdoc_dtype = dtype if dtype is not None else torch.float16
                s._oomdoc_enabled = enabled
                return patch.orig_init(s, "cpu", dtype=torch.bfloat16, enabled=False)
            return patch.orig_init(s, device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

        def enter(s):
            if getattr(s, "_oomdoc_emulate", False):
                if s._oomdoc_enabled:
                    patch.depth += 1
                    if patch.depth == 1:
                        patch.mode = CudaAutocastMode(s._oomdoc_dtype)
                        patch.mode.__enter__()
                        patch.recorder.autocast_dtypes.add(str(s._oomdoc_dtype).replace("torch.", ""))
                return s
            return patch.orig_enter(s)

        def exit_(s, *exc):
            if getattr(s, "_oomdoc_emulate", False):
                if s._oomdoc_enabled:
                    patch.depth -= 1
                    if patch.depth == 0 and patch.mode is not None:
                        m, patch.mode = patch.mode, None
                        m.cache.clear()
                        m.__exit__(*exc)
                return False
            return patch.orig_exit(s, *exc)

        cls.__init__, cls.__enter__, cls.__exit__ = init, enter, exit_

        # torch.utils.checkpoint re-enters the autocast state of the forward when it recomputes in
        # backward, but it reads the state of the inputs' device (the CPU), where the emulation
        # leaves autocast off: recompute the function under the same emulated CUDA autocast.
        import torch.utils.checkpoint as ckpt
        self.ckpt = ckpt
        # the generator checkpoint() calls by name (torch >= 2.12: the _impl one)
        self.orig_gens = {}
        for name in ("_checkpoint_without_reentrant_generator_impl",
                     "_checkpoint_without_reentrant_generator"):
            orig = getattr(ckpt, name, None)
            if orig is None:
                continue
            self.orig_gens[name] = orig

            def gen(fn, *a, _orig=orig, **k):
                mode = patch.mode
                if mode is None:
                    return _orig(fn, *a, **k)
                dtype = mode.dtype

                def fn_under_autocast(*fa, **fk):
                    if patch.mode is None:  # recomputation in backward
                        with torch.autocast("cuda", dtype=dtype):
                            return fn(*fa, **fk)
                    return fn(*fa, **fk)

                return _orig(fn_under_autocast, *a, **k)

            setattr(ckpt, name, gen)
        return self

    def __exit__(self, *exc):
        cls = self.cls
        cls.__init__, cls.__enter__, cls.__exit__ = self.orig_init, self.orig_enter, self.orig_exit
        for name, orig in self.orig_gens.items():
            setattr(self.ckpt, name, orig)
        return False
