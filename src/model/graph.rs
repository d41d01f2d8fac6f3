//! A symbolic trace of one training forward pass: which tensors exist, their dtype, which of them
//! autograd saves for backward, and which parameters each op uses.
//!
//! The block builders in `arch.rs` call the ops here the way the model's own Python code calls
//! PyTorch ops; the rules of each op (what its backward formula saves, what autocast casts) are
//! written once, here, from PyTorch's `tools/autograd/derivatives.yaml` and
//! `aten/src/ATen/autocast_mode.cpp`. Sizes are elements *per sample* (batch 1), so a trace is
//! traced once per precision mode and attention kind and scaled by the batch.
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::knobs::Precision;

/// Element type of a tensor as it lives on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    F32,
    /// bf16 or fp16 (2 bytes).
    Half,
    /// `torch.bool` (dropout masks, 1 byte).
    Bool,
    I64,
}

impl Dt {
    pub fn bytes(self) -> f64 {
        match self {
            Dt::F32 => 4.0,
            Dt::Half => 2.0,
            Dt::Bool => 1.0,
            Dt::I64 => 8.0,
        }
    }
}

/// How a precision setting changes the ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// fp32 weights and activations (also tf32: same storage).
    Fp32,
    /// fp32 weights, `torch.autocast` to bf16/fp16.
    Mixed,
    /// `model.to(bfloat16)`: everything in 2 bytes, no autocast.
    HalfTrue,
}

impl Mode {
    pub fn of(p: Precision) -> Mode {
        match p {
            Precision::Fp32 | Precision::Tf32 => Mode::Fp32,
            Precision::Bf16Mixed | Precision::Fp16Mixed => Mode::Mixed,
            Precision::Bf16True | Precision::Fp16True => Mode::HalfTrue,
        }
    }
    pub fn index(self) -> usize {
        match self {
            Mode::Fp32 => 0,
            Mode::Mixed => 1,
            Mode::HalfTrue => 2,
        }
    }
    /// dtype of parameters (and so of gradients and optimizer state).
    pub fn param_dt(self) -> Dt {
        match self {
            Mode::HalfTrue => Dt::Half,
            _ => Dt::F32,
        }
    }
    /// dtype of activations entering the model (float inputs, embeddings).
    pub fn act_dt(self) -> Dt {
        self.param_dt()
    }
}

/// A tensor handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct T(pub usize);

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub elems: f64,
    pub dt: Dt,
    pub requires_grad: bool,
    /// Op that created it (`usize::MAX` for inputs of the trace).
    pub producer: usize,
    /// Last op that reads it in forward.
    pub last_use: usize,
    /// Ops whose backward keeps this tensor (saved tensors).
    pub savers: SmallVec<[usize; 2]>,
    /// A tensor that stays alive while the caller holds it (a model output, a shared memory).
    pub pinned: bool,
    /// A view of another tensor: it has no storage of its own; saving or using it keeps `base` alive.
    pub base: Option<usize>,
    /// An autocast cast made inside an op's dispatch: the caller's tensor it was cast from stays
    /// referenced until the op that reads the cast has returned.
    pub cast_of: Option<usize>,
}

impl TensorInfo {
    pub fn bytes(&self) -> f64 {
        self.elems * self.dt.bytes()
    }
}

#[derive(Clone, Debug, Default)]
pub struct OpInfo {
    /// Index into `Trace::stages` of the block instance that ran this op.
    pub stage: usize,
    /// Tensors read and made (inline up to a few: a trace has thousands of ops, and one heap
    /// allocation each was a fifth of a cold estimate's time).
    pub inputs: SmallVec<[T; 3]>,
    pub outputs: SmallVec<[T; 1]>,
    /// Trainable parameter elements whose gradient this op's backward produces.
    pub param_grad_elems: f64,
    /// Bytes of autocast weight casts this op creates and keeps for backward (absolute, not per sample).
    pub weight_cast_bytes: f64,
    /// Extra per-sample bytes the backward of this op allocates besides the input gradients
    /// (e.g. recomputed softmax of flash attention backward).
    pub bwd_extra: f64,
    /// Extra per-sample bytes allocated inside the forward kernel and freed at its end.
    pub fwd_extra: f64,
    /// Forward FLOPs per sample.
    pub flops: f64,
    /// The parameter (interned name) whose gradient `param_grad_elems` is: a parameter used by
    /// several ops gets one gradient tensor (autograd accumulates into it).
    pub param_key: Option<u32>,
    /// A parameter gradient summed over rows in backward (bias, LayerScale, RMSNorm weight):
    /// (columns, rows per sample), for the reduction kernel's staging buffer
    /// (`memory::reduction`).
    pub row_sum: Option<(u64, f64)>,
}

/// One instance of a module (a transformer block, an embedding, a head).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageInfo {
    /// Module path of the instance, e.g. `rgb_model.blocks.3`.
    pub path: String,
    /// Module path of the repeated group, e.g. `rgb_model.blocks` (checkpoint-modules match this).
    pub group: String,
    /// A repeated block that `--checkpointing full` wraps in `torch.utils.checkpoint`.
    pub repeated: bool,
}

/// A registered parameter tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Param {
    pub path: String,
    /// Shape (1 or 2 dims kept; conv kernels as [out, in*k*k]).
    pub rows: u64,
    pub cols: u64,
    pub trainable: bool,
    /// Weight of a matmul/conv (autocast casts it; Adafactor factors it).
    pub matrix: bool,
}

impl Param {
    pub fn elems(&self) -> u64 {
        self.rows * self.cols
    }
}

/// The trace of one forward pass.
#[derive(Clone, Debug)]
pub struct Trace {
    pub mode: Mode,
    pub tensors: Vec<TensorInfo>,
    pub ops: Vec<OpInfo>,
    pub stages: Vec<StageInfo>,
    pub params: Vec<Param>,
    /// Input batch bytes per sample.
    pub input_bytes: f64,
    /// Elements of attention score matrices an eager attention writes, per sample
    /// (read/written several times: see `ComputeProfile`).
    pub attention_matrix_elems: f64,
    /// Largest cuDNN backward workspace of a convolution, bytes per sample
    /// (`memory::CONV_BWD_WORKSPACE_FACTOR`; cached by the allocator, `reserved.rs`).
    pub conv_workspace_max: f64,
    /// Ops that cannot train (inside `torch.no_grad`) are traced with `grad_enabled = false`.
    grad_enabled: bool,
    stage: usize,
    /// Parameter names (module paths) to their interned keys; a trace interns hundreds, so
    /// the hash is the fast non-cryptographic one.
    param_keys: rustc_hash::FxHashMap<String, u32>,
    /// Parameter names already cast by autocast in this forward (the weight cache).
    cast_cache: std::collections::HashSet<String>,
}

impl Trace {
    pub fn new(mode: Mode) -> Trace {
        // Room for a NavDP-sized trace (about 5,000 ops and tensors) from the start: growing by
        // doubling copied the tables several times. Pages never written are never touched.
        Trace {
            mode,
            tensors: Vec::with_capacity(8192),
            ops: Vec::with_capacity(8192),
            stages: vec![StageInfo {
                path: String::new(),
                group: String::new(),
                repeated: false,
            }],
            params: Vec::new(),
            input_bytes: 0.0,
            attention_matrix_elems: 0.0,
            conv_workspace_max: 0.0,
            grad_enabled: true,
            stage: 0,
            param_keys: Default::default(),
            cast_cache: Default::default(),
        }
    }

    // ------------------------------------------------------------------ bookkeeping
    /// Starts a new module instance; ops until the next call belong to it.
    pub fn enter(&mut self, path: &str, group: &str, repeated: bool) {
        self.stages.push(StageInfo {
            path: path.to_string(),
            group: group.to_string(),
            repeated,
        });
        self.stage = self.stages.len() - 1;
    }

    /// Back to the top level (ops outside repeated blocks).
    pub fn leave(&mut self) {
        self.stage = 0;
    }

    pub fn set_grad_enabled(&mut self, on: bool) {
        self.grad_enabled = on;
    }

    /// A model input (no grad), counted in the input batch.
    pub fn input(&mut self, elems: f64, dt: Dt) -> T {
        self.input_bytes += elems * dt.bytes();
        self.push_tensor(elems, dt, false, usize::MAX)
    }

    /// A tensor made inside the model without grad (noise, masks, position ids).
    pub fn constant(&mut self, elems: f64, dt: Dt) -> T {
        let op = self.push_op(&[], 0.0);
        let t = self.push_tensor(elems, dt, false, op);
        self.ops[op].outputs.push(t);
        t
    }

    /// Registers a parameter and returns whether it gets a gradient.
    pub fn param(
        &mut self,
        path: &str,
        rows: u64,
        cols: u64,
        trainable: bool,
        matrix: bool,
    ) -> bool {
        self.params.push(Param {
            path: path.to_string(),
            rows,
            cols,
            trainable,
            matrix,
        });
        trainable
    }

    pub fn info(&self, t: T) -> &TensorInfo {
        &self.tensors[t.0]
    }
    pub fn elems(&self, t: T) -> f64 {
        self.tensors[t.0].elems
    }
    pub fn dt(&self, t: T) -> Dt {
        self.tensors[t.0].dt
    }
    fn rg(&self, t: T) -> bool {
        self.tensors[t.0].requires_grad
    }
    /// Keeps a tensor alive until the end of forward (held by the caller).
    pub fn pin(&mut self, t: T) {
        self.tensors[t.0].pinned = true;
    }

    /// The `k`-th input of the op that made `t` (e.g. the tensor a copy was taken of); `t`
    /// itself for an input of the trace or an op with fewer inputs.
    pub fn operand(&self, t: T, k: usize) -> T {
        self.ops
            .get(self.tensors[t.0].producer)
            .and_then(|op| op.inputs.get(k).copied())
            .unwrap_or(t)
    }

    fn push_tensor(&mut self, elems: f64, dt: Dt, rg: bool, producer: usize) -> T {
        self.tensors.push(TensorInfo {
            elems,
            dt,
            requires_grad: rg && self.grad_enabled,
            producer,
            last_use: producer,
            savers: SmallVec::new(),
            pinned: false,
            base: None,
            cast_of: None,
        });
        T(self.tensors.len() - 1)
    }

    /// The tensor owning the storage of `t`.
    pub fn root(&self, t: T) -> T {
        match self.tensors[t.0].base {
            Some(b) => T(b),
            None => t,
        }
    }

    /// A view (slice, `split`, `unbind`, `transpose`...) of `x` with `elems` elements: no storage.
    pub fn view(&mut self, x: T, elems: f64) -> T {
        let r = self.root(x);
        let (dt, rg) = (self.dt(x), self.rg(x));
        // a view op: no storage, no saved tensors; in backward its gradient flows to the base
        let idx = self.push_op(&[x], 0.0);
        self.tensors.push(TensorInfo {
            elems,
            dt,
            requires_grad: rg && self.grad_enabled,
            producer: idx,
            last_use: idx,
            savers: SmallVec::new(),
            pinned: false,
            base: Some(r.0),
            cast_of: None,
        });
        let v = T(self.tensors.len() - 1);
        self.ops[idx].outputs.push(v);
        v
    }

    /// Makes the last op's parameter gradient belong to parameter `name` (shared weights get one
    /// gradient).
    pub fn tag_param(&mut self, name: &str) {
        let n = self.param_keys.len() as u32;
        let k = match self.param_keys.get(name) {
            Some(&k) => k,
            None => {
                self.param_keys.insert(name.to_string(), n);
                n
            }
        };
        self.last_op().param_key = Some(k);
    }

    fn push_op(&mut self, inputs: &[T], flops: f64) -> usize {
        let idx = self.ops.len();
        for t in inputs {
            let r = self.root(*t);
            self.tensors[r.0].last_use = idx;
            self.tensors[t.0].last_use = idx;
            if let Some(src) = self.tensors[t.0].cast_of {
                let sr = self.root(T(src));
                self.tensors[sr.0].last_use = self.tensors[sr.0].last_use.max(idx);
            }
        }
        self.ops.push(OpInfo {
            stage: self.stage,
            inputs: SmallVec::from_slice(inputs),
            outputs: SmallVec::new(),
            flops,
            ..Default::default()
        });
        idx
    }

    /// The general op: reads `inputs`, makes one output, saves `saved` for backward when the
    /// output needs a gradient.
    pub fn op(
        &mut self,
        inputs: &[T],
        out_elems: f64,
        out_dt: Dt,
        saved: &[T],
        param_grad: f64,
        flops: f64,
    ) -> T {
        let rg = inputs.iter().any(|t| self.rg(*t)) || param_grad > 0.0;
        let idx = self.push_op(inputs, flops);
        let out = self.push_tensor(out_elems, out_dt, rg, idx);
        self.ops[idx].outputs.push(out);
        if rg && self.grad_enabled {
            self.ops[idx].param_grad_elems = param_grad;
            for s in saved {
                let r = self.root(*s);
                if !self.tensors[r.0].savers.contains(&idx) {
                    self.tensors[r.0].savers.push(idx);
                }
            }
        }
        out
    }

    fn last_op(&mut self) -> &mut OpInfo {
        let n = self.ops.len() - 1;
        &mut self.ops[n]
    }

    // ------------------------------------------------------------------ autocast
    /// A cast autocast makes inside an op's dispatch: the caller's `x` stays referenced until the
    /// op reading the cast has returned (`push_op`).
    fn dispatch_cast(&mut self, x: T, to: Dt) -> T {
        let c = self.cast(x, to);
        self.tensors[c.0].cast_of = Some(x.0);
        c
    }

    /// autocast's cast to the lower precision for ops on its `lower_precision_fp` list
    /// (`autocast_mode.cpp`: linear, matmul, bmm, conv*, addmm, baddbmm, sdpa...): a new tensor
    /// when the input is fp32 under `Mode::Mixed`, the same tensor otherwise.
    pub fn autocast_low(&mut self, x: T) -> T {
        if self.mode == Mode::Mixed && self.dt(x) == Dt::F32 {
            self.dispatch_cast(x, Dt::Half)
        } else {
            x
        }
    }

    /// autocast's cast to fp32 for ops on its `fp32` list (layer_norm, softmax, log_softmax,
    /// pow, exp, sum, mse_loss, cross_entropy...).
    pub fn autocast_f32(&mut self, x: T) -> T {
        if self.mode == Mode::Mixed && self.dt(x) == Dt::Half {
            self.dispatch_cast(x, Dt::F32)
        } else {
            x
        }
    }

    /// `x.to(dtype)`: a copy whose backward saves nothing.
    pub fn cast(&mut self, x: T, dt: Dt) -> T {
        if self.dt(x) == dt {
            return x;
        }
        let e = self.elems(x);
        self.op(&[x], e, dt, &[], 0.0, 0.0)
    }

    /// Records an autocast cast of a weight: cached for the whole forward when the weight is a
    /// trainable leaf (`autocast_mode.cpp` `cached_cast`: only leaves with requires_grad are cached),
    /// and kept by the op's backward either way. A frozen weight is cast anew at every call, and
    /// the copy is kept when the input needs a gradient (grad_input = grad @ W needs it): the
    /// frozen base layers of LoRA fine-tuning.
    fn weight_cast(&mut self, name: &str, elems: f64, trainable: bool, leaf: bool, input_rg: bool) {
        if self.mode != Mode::Mixed || !self.grad_enabled {
            return;
        }
        if trainable && leaf {
            if self.cast_cache.insert(name.to_string()) {
                self.last_op().weight_cast_bytes += elems * 2.0;
            }
        } else if trainable || input_rg {
            // a view of a parameter (e.g. `in_proj_weight.split(...)`) or a frozen weight: cast
            // anew at every call
            self.last_op().weight_cast_bytes += elems * 2.0;
        }
    }

    // ------------------------------------------------------------------ ops
    /// `nn.Linear` / `F.linear` / HF `Conv1D` (addmm) on `tokens` rows of `fin` features.
    /// Saves its (autocast) input when the weight is trainable (grad_W = grad^T x).
    /// `copy_input`: the input is a non-contiguous 3-D view and `F.linear` goes through
    /// `matmul`, whose `reshape` copies it (that copy is what gets saved).
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &mut self,
        name: &str,
        x: T,
        fin: u64,
        fout: u64,
        bias: bool,
        trainable: bool,
        copy_input: bool,
    ) -> T {
        self.param(name, fout, fin, trainable, true);
        if bias {
            self.param(&format!("{name}.bias"), 1, fout, trainable, false);
        }
        self.linear_shared(name, x, fin, fout, bias, trainable, copy_input, true)
    }

    /// A linear layer whose weight was registered elsewhere (tied embeddings, a split of a packed
    /// weight: `leaf = false`).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_shared(
        &mut self,
        name: &str,
        x: T,
        fin: u64,
        fout: u64,
        bias: bool,
        trainable: bool,
        copy_input: bool,
        leaf: bool,
    ) -> T {
        let tokens = self.elems(x) / fin as f64;
        let mut xi = self.autocast_low(x);
        if copy_input {
            xi = self.op(&[xi], self.elems(xi), self.dt(xi), &[], 0.0, 0.0);
        }
        let w = (fin * fout) as f64 + if bias { fout as f64 } else { 0.0 };
        let saved: Vec<T> = if trainable { vec![xi] } else { vec![] };
        let out_dt = self.low_or(x);
        let y = self.op(
            &[xi],
            tokens * fout as f64,
            out_dt,
            &saved,
            if trainable { w } else { 0.0 },
            2.0 * tokens * (fin * fout) as f64,
        );
        if trainable {
            self.tag_param(name.trim_end_matches(".q").trim_end_matches(".kv"));
            let op = self.last_op();
            if bias && op.param_grad_elems > 0.0 {
                op.row_sum = Some((fout, tokens));
            }
        }
        let input_rg = self.rg(xi);
        self.weight_cast(name, w, trainable, leaf, input_rg);
        y
    }

    /// dtype of a matmul output: the autocast dtype, or the input's own in fp32/half-true.
    fn low_or(&self, x: T) -> Dt {
        match self.mode {
            Mode::Mixed => Dt::Half,
            _ => self.dt(x),
        }
    }

    /// `nn.Conv2d` without bias on `cin x h x w` giving `cout x ho x wo` per sample.
    /// Saves its input (for grad_W) and uses the weight (for grad_x).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        name: &str,
        x: T,
        cin: u64,
        cout: u64,
        k: u64,
        hw_out: u64,
        bias: bool,
        trainable: bool,
    ) -> T {
        self.param(name, cout, cin * k * k, trainable, true);
        if bias {
            self.param(&format!("{name}.bias"), 1, cout, trainable, false);
        }
        let xi = self.autocast_low(x);
        let w = (cout * cin * k * k) as f64 + if bias { cout as f64 } else { 0.0 };
        let x_rg = self.rg(xi);
        let saved: Vec<T> = if trainable || x_rg { vec![xi] } else { vec![] };
        let out_dt = self.low_or(x);
        let y = self.op(
            &[xi],
            (cout * hw_out) as f64,
            out_dt,
            &saved,
            if trainable { w } else { 0.0 },
            2.0 * (cin * k * k * cout * hw_out) as f64,
        );
        self.weight_cast(name, w, trainable, true, x_rg);
        if !saved.is_empty() {
            // cuDNN workspace of the backward kernels, allocated through the caching allocator
            // and freed when the call returns (every convolution goes through cuDNN)
            let out_b = (cout * hw_out) as f64 * out_dt.bytes();
            let in_b = self.elems(xi) * self.dt(xi).bytes();
            let ws = out_b.max(in_b) * crate::memory::CONV_BWD_WORKSPACE_FACTOR;
            self.conv_workspace_max = self.conv_workspace_max.max(ws);
            let n = self.ops.len() - 1;
            self.ops[n].bwd_extra += ws;
        }
        y
    }

    /// `torch.matmul(a, b)` / `bmm` of activations: saves both (autocast) inputs.
    /// `out_elems` per sample, `flops` per sample.
    pub fn matmul(&mut self, a: T, b: T, out_elems: f64, flops: f64) -> T {
        let ai = self.autocast_low(a);
        let bi = self.autocast_low(b);
        let dt = self.low_or(a);
        self.op(&[ai, bi], out_elems, dt, &[ai, bi], 0.0, flops)
    }

    /// A materialised copy (`.contiguous()`, `reshape` of a non-viewable tensor, `repeat`, `cat`
    /// of one tensor): backward saves nothing.
    pub fn copy(&mut self, x: T) -> T {
        let (e, dt) = (self.elems(x), self.dt(x));
        self.op(&[x], e, dt, &[], 0.0, 0.0)
    }

    /// `torch.cat` of several tensors: saves nothing (backward only needs sizes).
    pub fn cat(&mut self, xs: &[T]) -> T {
        let e = xs.iter().map(|t| self.elems(*t)).sum();
        let dt = self.promote(xs);
        self.op(xs, e, dt, &[], 0.0, 0.0)
    }

    /// Elementwise result type: fp32 wins over half (type promotion of two tensors).
    fn promote(&self, xs: &[T]) -> Dt {
        if xs.iter().any(|t| self.dt(*t) == Dt::F32) {
            Dt::F32
        } else {
            self.dt(xs[0])
        }
    }

    /// `a + b` / `a - b` (broadcast b allowed): saves nothing. Output has `a`'s size.
    pub fn add(&mut self, a: T, b: T) -> T {
        let e = self.elems(a).max(self.elems(b));
        let dt = self.promote(&[a, b]);
        self.op(&[a, b], e, dt, &[], 0.0, e)
    }

    /// `a + param` (bias, position embedding): saves nothing; the parameter gets a gradient.
    /// The result follows type promotion with the parameter's dtype: under autocast an fp32
    /// parameter added to a bf16 activation gives fp32.
    pub fn add_param(&mut self, a: T, param_elems: u64, trainable: bool) -> T {
        let e = self.elems(a);
        let dt = self.promote_param(a);
        let y = self.op(
            &[a],
            e,
            dt,
            &[],
            if trainable { param_elems as f64 } else { 0.0 },
            e,
        );
        self.row_sum_of_param(e, param_elems);
        y
    }

    /// `a * b` of two activations: saves both (grad_a = g*b, grad_b = g*a).
    pub fn mul(&mut self, a: T, b: T) -> T {
        let e = self.elems(a).max(self.elems(b));
        let dt = self.promote(&[a, b]);
        self.op(&[a, b], e, dt, &[a, b], 0.0, e)
    }

    /// `a * param` (LayerScale, RMSNorm weight): saves `a` for the parameter's gradient.
    /// Output dtype promoted with the parameter's, as `add_param`.
    pub fn mul_param(&mut self, a: T, param_elems: u64, trainable: bool) -> T {
        let e = self.elems(a);
        let dt = self.promote_param(a);
        let saved: Vec<T> = if trainable { vec![a] } else { vec![] };
        let y = self.op(
            &[a],
            e,
            dt,
            &saved,
            if trainable { param_elems as f64 } else { 0.0 },
            e,
        );
        self.row_sum_of_param(e, param_elems);
        y
    }

    /// The gradient of a parameter broadcast over the rows of `elems` (per sample) is summed
    /// over those rows in backward (`sum_to`).
    fn row_sum_of_param(&mut self, elems: f64, param_elems: u64) {
        let op = self.last_op();
        if op.param_grad_elems > 0.0 && param_elems > 0 {
            op.row_sum = Some((param_elems, elems / param_elems as f64));
        }
    }

    fn promote_param(&self, a: T) -> Dt {
        if self.mode.param_dt() == Dt::F32 {
            Dt::F32
        } else {
            self.dt(a)
        }
    }

    /// `a * b` with `b` a small tensor without grad held in the parameters' dtype (rotary `cos` /
    /// `sin`, made from the fp32 hidden states under autocast): saves only `b`, and a half `a`
    /// times an fp32 `b` gives fp32 (type promotion).
    /// For memory it is `add_param` of a parameter without gradient: one output in the promoted
    /// dtype, nothing of `a`'s size saved.
    pub fn mul_const(&mut self, a: T) -> T {
        self.add_param(a, 0, false)
    }

    /// `a * scalar`, `a + scalar`: saves nothing.
    pub fn scalar(&mut self, a: T) -> T {
        let (e, dt) = (self.elems(a), self.dt(a));
        self.op(&[a], e, dt, &[], 0.0, e)
    }

    /// An elementwise function that saves its input (gelu, silu, sigmoid-based, pow, erf...),
    /// computed in the input's dtype.
    pub fn unary_save_input(&mut self, x: T) -> T {
        let (e, dt) = (self.elems(x), self.dt(x));
        self.op(&[x], e, dt, &[x], 0.0, 8.0 * e)
    }

    /// An elementwise function that saves its output (tanh, sigmoid, exp, relu, rsqrt).
    pub fn unary_save_output(&mut self, x: T) -> T {
        let (e, dt) = (self.elems(x), self.dt(x));
        let y = self.op(&[x], e, dt, &[], 0.0, 4.0 * e);
        if self.rg(y) && self.grad_enabled {
            self.tensors[y.0].savers.push(self.ops.len() - 1);
        }
        y
    }

    /// `nn.ReLU(inplace=True)`: overwrites its input and saves the result (same storage).
    pub fn relu_inplace(&mut self, x: T) -> T {
        if !(self.rg(x) && self.grad_enabled) {
            return x;
        }
        // the result shares the input's storage; `threshold_backward` reads it and writes a new
        // gradient for the input
        let r = self.root(x);
        let idx = self.push_op(&[x], self.elems(x));
        self.tensors.push(TensorInfo {
            elems: self.elems(x),
            dt: self.dt(x),
            requires_grad: true,
            producer: idx,
            last_use: idx,
            savers: SmallVec::new(),
            pinned: false,
            base: Some(r.0),
            cast_of: None,
        });
        let y = T(self.tensors.len() - 1);
        self.ops[idx].outputs.push(y);
        if !self.tensors[r.0].savers.contains(&idx) {
            self.tensors[r.0].savers.push(idx);
        }
        y
    }

    /// `nn.Dropout(p)` in training: `native_dropout` keeps a bool mask (1 byte/element).
    pub fn dropout(&mut self, x: T, p: f64) -> T {
        if p <= 0.0 || !self.rg(x) {
            return x;
        }
        let (e, dt) = (self.elems(x), self.dt(x));
        let y = self.op(&[x], e, dt, &[], 0.0, e);
        let idx = self.ops.len() - 1;
        let mask = self.push_tensor(e, Dt::Bool, false, idx);
        self.ops[idx].outputs.push(mask);
        if self.grad_enabled {
            self.tensors[mask.0].savers.push(idx);
        }
        y
    }

    /// `nn.LayerNorm(dim)`: on autocast's fp32 list, saves its (fp32) input, mean and rstd
    /// (fp32, one per row) and the weight; output in the computation dtype.
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: T,
        dim: u64,
        affine_bias: bool,
        trainable: bool,
    ) -> T {
        self.param(name, 1, dim, trainable, false);
        if affine_bias {
            self.param(&format!("{name}.bias"), 1, dim, trainable, false);
        }
        self.layer_norm_shared(name, x, dim, affine_bias, trainable)
    }

    /// A LayerNorm whose parameters were registered already (a module called again).
    pub fn layer_norm_shared(
        &mut self,
        name: &str,
        x: T,
        dim: u64,
        affine_bias: bool,
        trainable: bool,
    ) -> T {
        let xi = self.autocast_f32(x);
        let rows = self.elems(xi) / dim as f64;
        let pe = if affine_bias { 2 * dim } else { dim } as f64;
        let (e, dt) = (self.elems(xi), self.dt(xi));
        let y = self.op(
            &[xi],
            e,
            dt,
            &[xi],
            if trainable { pe } else { 0.0 },
            8.0 * e,
        );
        if trainable {
            self.tag_param(name);
        }
        if self.rg(y) && self.grad_enabled {
            let idx = self.ops.len() - 1;
            // mean and rstd: fp32 (acc type) even for half inputs (layer_norm_kernel.cu)
            let stats = self.push_tensor(2.0 * rows, Dt::F32, false, idx);
            self.ops[idx].outputs.push(stats);
            self.tensors[stats.0].savers.push(idx);
        }
        y
    }

    /// `nn.BatchNorm2d` in training (cudnn): saves input, and per-channel mean / invstd (small);
    /// not on autocast's lists, runs in the input's dtype with fp32 statistics.
    pub fn batch_norm(&mut self, name: &str, x: T, ch: u64, trainable: bool) -> T {
        self.param(name, 1, ch, trainable, false);
        self.param(&format!("{name}.bias"), 1, ch, trainable, false);
        let (e, dt) = (self.elems(x), self.dt(x));
        self.op(
            &[x],
            e,
            dt,
            &[x],
            if trainable { 2.0 * ch as f64 } else { 0.0 },
            8.0 * e,
        )
    }

    /// `softmax(x)`: autocast runs it in fp32 (fp32 list); saves its output.
    pub fn softmax(&mut self, x: T) -> T {
        let xi = self.autocast_f32(x);
        let y = self.unary_save_output(xi);
        // the fp32 cast of the input is freed at once; mark it
        let _ = xi;
        y
    }

    #[allow(clippy::too_many_arguments)]
    /// `F.scaled_dot_product_attention` through the flash or memory-efficient kernels
    /// (`_scaled_dot_product_{flash,efficient}_attention`): saves q, k, v, the output and the
    /// logsumexp (fp32, one per query row and head); no s x s matrix.
    /// `rows` = query rows per sample (tokens x heads). Returns the output, laid out
    /// [batch, seq, heads, dim] in memory, so the usual `transpose(1,2).reshape` is a view.
    pub fn sdpa(
        &mut self,
        q: T,
        k: T,
        v: T,
        q_tokens: f64,
        kv_tokens: f64,
        heads: u64,
        head_dim: u64,
    ) -> T {
        let qi = self.autocast_low(q);
        let ki = self.autocast_low(k);
        let vi = self.autocast_low(v);
        let out_elems = q_tokens * (heads * head_dim) as f64;
        let dt = self.low_or(q);
        let flops = 4.0 * q_tokens * kv_tokens * (heads * head_dim) as f64;
        let o = self.op(&[qi, ki, vi], out_elems, dt, &[qi, ki, vi], 0.0, flops);
        if self.rg(o) && self.grad_enabled {
            let idx = self.ops.len() - 1;
            self.tensors[o.0].savers.push(idx);
            let lse = self.push_tensor(q_tokens * heads as f64, Dt::F32, false, idx);
            self.ops[idx].outputs.push(lse);
            self.tensors[lse.0].savers.push(idx);
            // backward: dq, dk, dv plus the kernel's fp32 dq accumulator (flash bwd keeps
            // dq_accum in fp32, `flash_bwd_launch_template.h`)
            self.ops[idx].bwd_extra = q_tokens * (heads * head_dim) as f64 * 4.0;
        }
        o
    }

    #[allow(clippy::too_many_arguments)]
    /// `F.scaled_dot_product_attention` on its math backend (`_scaled_dot_product_attention_math`),
    /// which CUDA runs when the fused kernels refuse the call: a mask that requires grad, such as
    /// T5's learned position bias (`check_attn_mask_shape`, sdp_utils_cpp.h). Under autocast the
    /// call's inputs are half, and the math backend upcasts them to fp32
    /// (`allow_fp16_bf16_reduction_math_sdp` is off by default), computes in fp32 and casts the
    /// output back. It saves q and k^T times sqrt(scale) (contiguous copies for the batched
    /// product), the softmax (`_safe_softmax`), the dropout mask and output, and a copy of v.
    pub fn sdpa_math(
        &mut self,
        q: T,
        k: T,
        v: T,
        q_tokens: f64,
        kv_tokens: f64,
        heads: u64,
        head_dim: u64,
        dropout: f64,
    ) -> T {
        let out_dt = self.low_or(q);
        let d = (heads * head_dim) as f64;
        let (q, k, v) = (
            self.autocast_low(q),
            self.autocast_low(k),
            self.autocast_low(v),
        );
        let (qf, kf, vf) = (
            self.cast(q, Dt::F32),
            self.cast(k, Dt::F32),
            self.cast(v, Dt::F32),
        );
        let qs = self.scalar(qf);
        let ks = self.scalar(kf);
        let qc = self.copy(qs);
        let kc = self.copy(ks);
        let s_elems = q_tokens * kv_tokens * heads as f64;
        self.note_attention_matrix(s_elems);
        let flops = 2.0 * q_tokens * kv_tokens * d;
        let scores = self.op(&[qc, kc], s_elems, Dt::F32, &[qc, kc], 0.0, flops);
        let biased = self.scalar(scores); // + the mask
        let p = self.unary_save_output(biased);
        let p = self.dropout(p, dropout);
        let vc = self.copy(vf);
        let o = self.op(&[p, vc], q_tokens * d, Dt::F32, &[p, vc], 0.0, flops);
        self.cast(o, out_dt)
    }

    /// Counts an eager attention score matrix (for the throughput model).
    pub fn note_attention_matrix(&mut self, elems: f64) {
        self.attention_matrix_elems += elems;
    }

    /// `nn.Embedding` lookup of `tokens` ids into `dim`: saves the indices (int64).
    pub fn embedding(&mut self, name: &str, ids: T, vocab: u64, dim: u64, trainable: bool) -> T {
        self.param(name, vocab, dim, trainable, true);
        let tokens = self.elems(ids);
        let dt = self.mode.act_dt();
        self.op(
            &[ids],
            tokens * dim as f64,
            dt,
            &[ids],
            if trainable { (vocab * dim) as f64 } else { 0.0 },
            0.0,
        )
    }

    /// A gather of a parameter table without an index tensor (learned position embeddings
    /// `wpe(arange)`): output `elems`, the table gets a gradient.
    pub fn param_lookup(
        &mut self,
        name: &str,
        rows: u64,
        dim: u64,
        elems: f64,
        trainable: bool,
    ) -> T {
        self.param(name, rows, dim, trainable, true);
        let dt = self.mode.act_dt();
        self.op(
            &[],
            elems,
            dt,
            &[],
            if trainable { (rows * dim) as f64 } else { 0.0 },
            0.0,
        )
    }

    /// `F.cross_entropy` on `rows` x `classes` logits: `log_softmax(logits, dim,
    /// dtype=logits.dtype)` then `nll_loss` (`cross_entropy_loss` in
    /// aten/src/ATen/native/LossNLL.cpp). The explicit dtype keeps autocast from upcasting
    /// log_softmax (its `fp32_set_opt_dtype` policy keeps a given dtype), so half logits give half
    /// log-probabilities, which LogSoftmaxBackward saves; `nll_loss` is on autocast's fp32 list, so
    /// it takes an fp32 copy of them, which NllLossBackward saves. Callers that upcast first
    /// (`logits.float()`, transformers' `ForCausalLMLoss`) pass fp32 logits: one fp32 tensor is
    /// saved. Backward allocates the nll gradient and the log_softmax gradient, full size.
    pub fn cross_entropy(&mut self, logits: T, rows: f64, classes: u64) -> T {
        let e = self.elems(logits);
        let dt = self.dt(logits);
        let lsm = self.op(&[logits], e, dt, &[], 0.0, 5.0 * e);
        if self.rg(lsm) && self.grad_enabled {
            let idx = self.ops.len() - 1;
            self.tensors[lsm.0].savers.push(idx);
        }
        let _ = classes;
        let nll_in = self.autocast_f32(lsm);
        let target = self.constant(rows, Dt::I64);
        let saved = if nll_in == lsm {
            vec![target]
        } else {
            vec![nll_in, target]
        };
        self.op(&[nll_in, target], 1.0, Dt::F32, &saved, 0.0, rows)
    }

    /// Reduction of a loss-like tensor to a scalar (`.mean()`, `.square().mean()`).
    pub fn mse_loss(&mut self, pred: T) -> T {
        let x = self.autocast_f32(pred);
        let e = self.elems(x);
        self.op(&[x], 1.0, Dt::F32, &[x], 0.0, 3.0 * e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// trainable linear -> frozen linear -> trainable linear under bf16 autocast.
    fn lora_like(mode: Mode) -> Trace {
        let mut t = Trace::new(mode);
        let x = t.input(16.0 * 64.0, Dt::F32);
        let h = t.linear("a", x, 64, 64, true, true, false);
        let h = t.linear("frozen", h, 64, 128, false, false, false);
        t.linear("b", h, 128, 8, true, true, false);
        t
    }

    #[test]
    fn frozen_weights_keep_their_autocast_copy_when_the_input_needs_a_gradient() {
        let t = lora_like(Mode::Mixed);
        // ops: cast(x), a, cast(h) is not needed (h is bf16), frozen, b
        let casts: Vec<f64> = t
            .ops
            .iter()
            .filter(|o| o.weight_cast_bytes > 0.0)
            .map(|o| o.weight_cast_bytes)
            .collect();
        // a: (64*64 + 64) * 2 bytes, frozen: 64*128 * 2 (re-cast, saved: its input needs a
        // gradient), b: (128*8 + 8) * 2
        assert_eq!(casts, vec![8320.0, 16384.0, 2064.0]);
        // a frozen first layer: its input needs no gradient, nothing is saved
        let mut t = Trace::new(Mode::Mixed);
        let x = t.input(64.0, Dt::F32);
        t.linear("frozen", x, 64, 64, false, false, false);
        assert!(t.ops.iter().all(|o| o.weight_cast_bytes == 0.0));
        // no autocast, no casts
        assert!(lora_like(Mode::Fp32)
            .ops
            .iter()
            .all(|o| o.weight_cast_bytes == 0.0));
    }

    /// `linear(norm(x))` under bf16 autocast: the norm's fp32 output is cast inside the linear's
    /// dispatch, and the caller's reference keeps it until the linear has returned (a CPU trace
    /// of `F.linear` under autocast frees it after the matmul's output exists).
    #[test]
    fn autocast_casts_keep_the_callers_tensor_until_the_op_returns() {
        for (mode, ops_between) in [(Mode::Mixed, 2), (Mode::Fp32, 1)] {
            let mut t = Trace::new(mode);
            let x = t.input(64.0, Dt::F32);
            let h = t.layer_norm("norm", x, 64, true, true);
            let before = t.ops.len();
            t.linear("fc", h, 64, 64, true, true, false);
            // (the cast, then) the matmul
            assert_eq!(t.ops.len() - before, ops_between);
            assert_eq!(t.info(h).last_use, t.ops.len() - 1, "{mode:?}");
        }
    }

    /// What the math backend keeps for backward, per sample, as the CPU trace of T5's
    /// self-attention shows it (`_scaled_dot_product_attention_math`): q, k^T and v copies in
    /// fp32, the softmax and dropout output in fp32, the dropout mask in bool; the output comes
    /// back in the call's dtype.
    #[test]
    fn sdpa_math_keeps_fp32_copies_and_the_attention_matrix() {
        let (s, h, d) = (512.0, 8u64, 64u64);
        for mode in [Mode::Fp32, Mode::Mixed] {
            let mut t = Trace::new(mode);
            let x = t.input(s * (h * d) as f64, Dt::F32);
            let q = t.linear("q", x, h * d, h * d, false, true, false);
            let k = t.linear("k", x, h * d, h * d, false, true, false);
            let v = t.linear("v", x, h * d, h * d, false, true, false);
            let first = t.tensors.len();
            let o = t.sdpa_math(q, k, v, s, s, h, d, 0.1);
            let saved: f64 = t.tensors[first..]
                .iter()
                .filter(|x| !x.savers.is_empty())
                .map(|x| x.bytes())
                .sum();
            let qkv = 3.0 * s * (h * d) as f64 * 4.0;
            let matrix = s * s * h as f64;
            assert_eq!(saved, qkv + 2.0 * matrix * 4.0 + matrix, "{mode:?}");
            let out_dt = if mode == Mode::Mixed {
                Dt::Half
            } else {
                Dt::F32
            };
            assert_eq!(t.dt(o), out_dt);
        }
    }

    #[test]
    fn trainable_biases_are_summed_over_rows_in_backward() {
        let t = lora_like(Mode::Fp32);
        let sums: Vec<(u64, f64)> = t.ops.iter().filter_map(|o| o.row_sum).collect();
        // `a` and `b` have trainable biases over 16 rows per sample; the frozen layer has none
        assert_eq!(sums, vec![(64, 16.0), (8, 16.0)]);
    }
}
