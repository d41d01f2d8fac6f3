//! Architectures: a serialisable description (what presets, config.json files and TOML workloads
//! become) and, for each family, the forward pass written with the ops of `graph.rs` the way the
//! model's own code runs it (Hugging Face transformers 5, timm 1.0, torchvision 0.26, the NavDP
//! model of `calibration/navdp_model.py`).
use serde::{Deserialize, Serialize};

use super::graph::{Dt, Mode, Trace, T};
use crate::knobs::Attention;

/// Activation of a feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    /// `nn.GELU` / `F.gelu` (erf): one kernel, saves its input.
    Gelu,
    /// transformers `NewGELUActivation` ("gelu_new"): the tanh formula in Python ops, each op
    /// saving its own operands; `pow` runs in fp32 under autocast.
    GeluNewPython,
    /// `F.gelu(approximate="tanh")` ("gelu_pytorch_tanh"): one kernel.
    GeluTanh,
    /// `nn.ReLU()` (not in place): saves its output.
    Relu,
    /// SiLU with a gate (Llama/Mistral/Qwen MLP: down(silu(gate(x)) * up(x))).
    SwiGlu,
    /// gelu_new with a gate (T5 v1.1 "gated-gelu").
    GatedGeluNew,
}

/// Normalisation layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// `nn.LayerNorm` (weight + bias).
    LayerNorm,
    /// Llama/Qwen/Mistral RMSNorm in Python: fp32 upcast, pow, mean, rsqrt, two multiplies.
    RmsNorm,
    /// T5LayerNorm: RMS norm without mean subtraction, same Python shape as `RmsNorm`.
    T5Norm,
}

/// A decoder-only or encoder-only Hugging Face language model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmSpec {
    /// `gpt2`, `bert`, `llama` (also mistral, qwen2): the block code to follow.
    pub style: LmStyle,
    pub vocab: u64,
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    #[serde(default)]
    pub kv_heads: Option<u64>,
    #[serde(default)]
    pub head_dim: Option<u64>,
    pub ffn: u64,
    pub act: Act,
    /// Learned absolute position table rows (0: rotary or none).
    #[serde(default)]
    pub positions: u64,
    /// BERT token-type table rows.
    #[serde(default)]
    pub token_types: u64,
    #[serde(default)]
    pub tied_embeddings: bool,
    /// Dropout on hidden states / attention probabilities in training.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    /// Bias on the q/k/v projections (Qwen2: yes, Llama: no).
    #[serde(default)]
    pub qkv_bias: bool,
    /// Bias on the other linears.
    #[serde(default)]
    pub bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LmStyle {
    Gpt2,
    Bert,
    Llama,
}

/// T5-style encoder-decoder (`T5ForConditionalGeneration`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T5Spec {
    pub vocab: u64,
    pub d_model: u64,
    pub d_kv: u64,
    pub d_ff: u64,
    pub layers: u64,
    pub decoder_layers: u64,
    pub heads: u64,
    pub act: Act,
    pub tied_embeddings: bool,
    pub dropout: f64,
    pub relative_buckets: u64,
}

/// A ViT: timm `VisionTransformer` classifier or a DINOv2 encoder as NavDP uses it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitSpec {
    /// Module path prefix ("" for a classifier).
    #[serde(default)]
    pub path: String,
    pub image: u64,
    pub patch: u64,
    pub in_chans: u64,
    pub dim: u64,
    pub depth: u64,
    pub heads: u64,
    pub mlp_ratio: f64,
    /// Images per sample (NavDP: 8 frames).
    #[serde(default = "one")]
    pub frames: u64,
    /// DINOv2 LayerScale (`x * gamma` after attention and MLP).
    #[serde(default)]
    pub layerscale: bool,
    /// Classifier head classes (0: an encoder, returns patch tokens).
    #[serde(default)]
    pub classes: u64,
    /// Position-table grid side (DINOv2: 37, interpolated; 0: image/patch).
    #[serde(default)]
    pub pos_grid: u64,
    /// DINOv2 `mask_token` parameter (counted, frozen).
    #[serde(default)]
    pub mask_token: bool,
    /// Not trained: run under `torch.no_grad` (no activations kept).
    #[serde(default)]
    pub frozen: bool,
    /// Attention forced by the model's code, overriding `--attention` (None: follows it).
    #[serde(default)]
    pub attention: Option<Attention>,
}

fn one() -> u64 {
    1
}

/// torchvision ResNet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetSpec {
    /// Blocks per stage, e.g. [3, 4, 6, 3].
    pub layers: Vec<u64>,
    pub bottleneck: bool,
    pub image: u64,
    pub classes: u64,
    /// Bottleneck width multiplier x 64 (wide_resnet: 128).
    #[serde(default = "width64")]
    pub width_per_group: u64,
}

fn width64() -> u64 {
    64
}

/// The NavDP policy (`calibration/navdp_model.py`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NavDpSpec {
    /// `user` (82.19M) or `official` (InternNav HEAD, 133.36M, RGB encoder frozen).
    pub variant: String,
    pub image: u64,
    pub memory_size: u64,
    pub depth_frames: u64,
    pub tokens: u64,
    pub predict_size: u64,
    pub temporal_depth: u64,
    pub heads: u64,
    pub dim: u64,
    pub vit_depth: u64,
    pub vit_heads: u64,
    pub freeze_rgb: bool,
}

/// One model, in the terms the estimator needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Arch {
    Lm(LmSpec),
    T5(T5Spec),
    Vit(VitSpec),
    Resnet(ResNetSpec),
    Navdp(NavDpSpec),
}

/// Shapes that come from the knobs, not from the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub seq_len: u64,
    pub target_len: u64,
    pub image: u64,
    pub classes: u64,
    pub task: crate::knobs::Task,
    pub lora_rank: u64,
    pub lora_targets: Vec<String>,
}

/// Builds the forward trace of `arch` under `mode` with attention `attn`.
pub fn trace(arch: &Arch, shape: &Shape, mode: Mode, attn: Attention) -> Trace {
    let mut t = Trace::new(mode);
    let mut b = Builder {
        t: &mut t,
        shape,
        attn,
    };
    match arch {
        Arch::Lm(s) => b.lm(s),
        Arch::T5(s) => b.t5(s),
        Arch::Vit(s) => {
            let img = b.t.input(
                (s.in_chans * shape.image * shape.image) as f64,
                mode.act_dt(),
            );
            let y = b.vit(s, img, shape.image, shape.classes, "");
            let loss_in = y;
            let _ = b.t.cross_entropy(loss_in, 1.0, shape.classes);
            let _ = b.t.input(1.0, Dt::I64);
        }
        Arch::Resnet(s) => b.resnet(s),
        Arch::Navdp(s) => b.navdp(s),
    }
    t
}

struct Builder<'a> {
    t: &'a mut Trace,
    shape: &'a Shape,
    attn: Attention,
}

impl Builder<'_> {
    fn lora_on(&self, name: &str) -> bool {
        self.shape.lora_rank > 0
            && self
                .shape
                .lora_targets
                .iter()
                .any(|t| name.rsplit('.').next() == Some(t.as_str()) || name.ends_with(t.as_str()))
    }

    /// A linear layer that may carry a LoRA adapter (peft: base frozen, y = W x + B(A(dropout(x))) * s).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        name: &str,
        x: T,
        fin: u64,
        fout: u64,
        bias: bool,
        trainable: bool,
        copy: bool,
    ) -> T {
        if self.lora_on(name) {
            let r = self.shape.lora_rank;
            let y = self.t.linear(name, x, fin, fout, bias, false, copy);
            let a = self
                .t
                .linear(&format!("{name}.lora_A"), x, fin, r, false, true, copy);
            let bb = self
                .t
                .linear(&format!("{name}.lora_B"), a, r, fout, false, true, false);
            let s = self.t.scalar(bb);
            self.t.add(y, s)
        } else {
            let tr = trainable && self.shape.lora_rank == 0;
            self.t.linear(name, x, fin, fout, bias, tr, copy)
        }
    }

    fn trainable(&self) -> bool {
        self.shape.lora_rank == 0
    }

    /// `LlamaRMSNorm.forward` / `T5LayerNorm.forward`:
    /// `h = x.to(float32); var = h.pow(2).mean(-1); h = h * rsqrt(var + eps); w * h.to(in_dtype)`.
    fn rms_norm(&mut self, name: &str, x: T, dim: u64, trainable: bool) -> T {
        self.t.param(name, 1, dim, trainable, false);
        let in_dt = self.t.dt(x);
        let h = self.t.cast(x, Dt::F32);
        let rows = self.t.elems(h) / dim as f64;
        // pow (autocast fp32 list) saves its input
        let sq = self.t.unary_save_input(h);
        // mean over the last dim: saves nothing (sizes only)
        let var = self.t.op(&[sq], rows, Dt::F32, &[], 0.0, self.t.elems(sq));
        let var = self.t.scalar(var);
        let r = self.t.unary_save_output(var); // rsqrt saves its result
        let hn = self.t.mul(h, r);
        let hn = self.t.cast(hn, in_dt);
        self.t.mul_param(hn, dim, trainable)
    }

    /// Eager attention as transformers' `eager_attention_forward` / DINOv2 / timm without fused
    /// attention write it: `softmax(q k^T * scale) [dropout] @ v` over `q_tokens` queries.
    /// q, k, v are [b, heads, s, d] transposed views of projections (possibly one packed tensor);
    /// `matmul` folds them into `bmm` batches with `reshape`, which copies such views, and the
    /// copies are what `bmm` saves. `scale_q`: `(q * scale) @ k^T` (DINOv2), else the scores are
    /// scaled (transformers).
    #[allow(clippy::too_many_arguments)]
    fn eager_attention(
        &mut self,
        q: T,
        k: T,
        v: T,
        q_tokens: f64,
        kv_tokens: f64,
        heads: u64,
        head_dim: u64,
        scale_q: bool,
        dropout: f64,
        groups: f64,
    ) -> T {
        let d = (heads * head_dim) as f64;
        // k and v hold `kv_tokens` per attention group; a sample has `groups` of them when
        // several images share it (NavDP frames)
        let kv_total = kv_tokens * groups;
        let qv = self.t.view(q, q_tokens * d);
        let kv = self.t.view(k, kv_total * d);
        let vv = self.t.view(v, kv_total * d);
        let qs = if scale_q {
            self.t.scalar(qv)
        } else {
            self.t.copy(qv)
        };
        let kt = self.t.copy(kv);
        let s_elems = q_tokens * kv_tokens * heads as f64;
        self.t.note_attention_matrix(s_elems);
        let scores = self
            .t
            .matmul(qs, kt, s_elems, 2.0 * q_tokens * kv_tokens * d);
        let scores = if scale_q {
            scores
        } else {
            self.t.scalar(scores)
        };
        let p = self.t.softmax(scores);
        let p = self.t.dropout(p, dropout);
        let vc = self.t.copy(vv);
        self.t
            .matmul(p, vc, q_tokens * d, 2.0 * q_tokens * kv_tokens * d)
    }

    // ------------------------------------------------------------------ Hugging Face LMs
    fn lm(&mut self, s: &LmSpec) {
        let seq = self.shape.seq_len as f64;
        let d = s.hidden;
        let tr = self.trainable();
        let mode = self.t.mode;
        let ids = self.t.input(seq, Dt::I64);
        let _labels = self.t.input(seq, Dt::I64);
        self.t.enter("embeddings", "embeddings", false);
        let emb_name = match s.style {
            LmStyle::Gpt2 => "transformer.wte",
            LmStyle::Bert => "bert.embeddings.word_embeddings",
            LmStyle::Llama => "model.embed_tokens",
        };
        let mut h = self.t.embedding(emb_name, ids, s.vocab, d, tr);
        if s.token_types > 0 {
            let tt = self.t.constant(seq, Dt::I64);
            let te = self
                .t
                .embedding("token_type_embeddings", tt, s.token_types, d, tr);
            h = self.t.add(h, te);
        }
        if s.positions > 0 {
            let pe = self
                .t
                .param_lookup("position_embeddings", s.positions, d, seq * d as f64, tr);
            h = self.t.add(h, pe);
        }
        if s.style == LmStyle::Bert {
            h = self.t.layer_norm("embeddings.LayerNorm", h, d, true, tr);
        }
        h = self.t.dropout(h, s.dropout);
        let heads = s.heads;
        let kv = s.kv_heads.unwrap_or(heads);
        let hd = s.head_dim.unwrap_or(d / heads);
        for i in 0..s.layers {
            let p = match s.style {
                LmStyle::Gpt2 => format!("transformer.h.{i}"),
                LmStyle::Bert => format!("bert.encoder.layer.{i}"),
                LmStyle::Llama => format!("model.layers.{i}"),
            };
            let g = match s.style {
                LmStyle::Gpt2 => "transformer.h",
                LmStyle::Bert => "bert.encoder.layer",
                LmStyle::Llama => "model.layers",
            };
            self.t.enter(&p, g, true);
            h = match s.style {
                LmStyle::Gpt2 => self.gpt2_block(&p, s, h, seq, hd),
                LmStyle::Bert => self.bert_block(&p, s, h, seq, hd),
                LmStyle::Llama => self.llama_block(&p, s, h, seq, heads, kv, hd),
            };
        }
        self.t.enter("head", "head", false);
        let logits = match s.style {
            LmStyle::Gpt2 => {
                let h = self.t.layer_norm("transformer.ln_f", h, d, true, tr);
                self.head_linear(s, emb_name, h, d, false)
            }
            LmStyle::Llama => {
                let h = self.rms_norm("model.norm", h, d, tr);
                self.head_linear(s, emb_name, h, d, false)
            }
            LmStyle::Bert => {
                // BertLMPredictionHead: transform (dense, gelu, LayerNorm) then decoder + bias
                let x = self
                    .t
                    .linear("cls.predictions.transform.dense", h, d, d, true, tr, false);
                let x = self.t.unary_save_input(x);
                let x = self
                    .t
                    .layer_norm("cls.predictions.transform.LayerNorm", x, d, true, tr);
                self.head_linear(s, emb_name, x, d, true)
            }
        };
        // the model output holds the logits until forward ends; transformers 5's causal-LM loss
        // (`ForCausalLMLoss`) upcasts them (`logits.float()`) before cross_entropy over every
        // position, while `BertForMaskedLM` calls `CrossEntropyLoss` on them as they are
        self.t.pin(logits);
        let lf = if s.style == LmStyle::Bert {
            logits
        } else {
            self.t.cast(logits, Dt::F32)
        };
        let _ = mode;
        self.t.cross_entropy(lf, seq, s.vocab);
        self.t.leave();
    }

    fn head_linear(&mut self, s: &LmSpec, emb_name: &str, h: T, d: u64, bias: bool) -> T {
        let tr = self.trainable();
        if s.tied_embeddings {
            if bias {
                self.t.param("cls.predictions.bias", 1, s.vocab, tr, false);
            }
            self.t
                .linear_shared(emb_name, h, d, s.vocab, bias, tr, false, true)
        } else {
            self.t.linear("lm_head", h, d, s.vocab, bias, tr, false)
        }
    }

    /// transformers `GPT2Block` (sdpa or eager attention).
    fn gpt2_block(&mut self, p: &str, s: &LmSpec, x: T, seq: f64, hd: u64) -> T {
        let d = s.hidden;
        let tr = self.trainable();
        let h = self.t.layer_norm(&format!("{p}.ln_1"), x, d, true, tr);
        let qkv = self.linear(&format!("{p}.attn.c_attn"), h, d, 3 * d, true, tr, false);
        let a = match self.attn {
            Attention::Sdpa => self.t.sdpa(qkv, qkv, qkv, seq, seq, s.heads, hd),
            Attention::Eager => self.eager_attention(
                qkv,
                qkv,
                qkv,
                seq,
                seq,
                s.heads,
                hd,
                false,
                s.attention_dropout,
                1.0,
            ),
        };
        let a = if self.attn == Attention::Eager {
            self.t.copy(a)
        } else {
            a
        };
        let a = self.linear(&format!("{p}.attn.c_proj"), a, d, d, true, tr, false);
        let a = self.t.dropout(a, s.dropout);
        let x = self.t.add(x, a);
        let h = self.t.layer_norm(&format!("{p}.ln_2"), x, d, true, tr);
        let f = self.linear(&format!("{p}.mlp.c_fc"), h, d, s.ffn, true, tr, false);
        let f = self.act(s.act, f, None);
        let f = self.linear(&format!("{p}.mlp.c_proj"), f, s.ffn, d, true, tr, false);
        let f = self.t.dropout(f, s.dropout);
        self.t.add(x, f)
    }

    /// transformers `BertLayer` (post-norm).
    fn bert_block(&mut self, p: &str, s: &LmSpec, x: T, seq: f64, hd: u64) -> T {
        let d = s.hidden;
        let tr = self.trainable();
        let q = self.linear(
            &format!("{p}.attention.self.query"),
            x,
            d,
            d,
            true,
            tr,
            false,
        );
        let k = self.linear(&format!("{p}.attention.self.key"), x, d, d, true, tr, false);
        let v = self.linear(
            &format!("{p}.attention.self.value"),
            x,
            d,
            d,
            true,
            tr,
            false,
        );
        let a = match self.attn {
            Attention::Sdpa => self.t.sdpa(q, k, v, seq, seq, s.heads, hd),
            Attention::Eager => {
                let o = self.eager_attention(
                    q,
                    k,
                    v,
                    seq,
                    seq,
                    s.heads,
                    hd,
                    false,
                    s.attention_dropout,
                    1.0,
                );
                self.t.copy(o)
            }
        };
        let a = self.linear(
            &format!("{p}.attention.output.dense"),
            a,
            d,
            d,
            true,
            tr,
            false,
        );
        let a = self.t.dropout(a, s.dropout);
        let a = self.t.add(a, x);
        let a = self
            .t
            .layer_norm(&format!("{p}.attention.output.LayerNorm"), a, d, true, tr);
        let f = self.linear(
            &format!("{p}.intermediate.dense"),
            a,
            d,
            s.ffn,
            true,
            tr,
            false,
        );
        let f = self.act(s.act, f, None);
        let f = self.linear(&format!("{p}.output.dense"), f, s.ffn, d, true, tr, false);
        let f = self.t.dropout(f, s.dropout);
        let f = self.t.add(f, a);
        self.t
            .layer_norm(&format!("{p}.output.LayerNorm"), f, d, true, tr)
    }

    /// transformers `LlamaDecoderLayer` (also Mistral, Qwen2): RMSNorm, rotary q/k, GQA, SwiGLU.
    #[allow(clippy::too_many_arguments)]
    fn llama_block(
        &mut self,
        p: &str,
        s: &LmSpec,
        x: T,
        seq: f64,
        heads: u64,
        kv: u64,
        hd: u64,
    ) -> T {
        let d = s.hidden;
        let tr = self.trainable();
        let h = self.rms_norm(&format!("{p}.input_layernorm"), x, d, tr);
        let q = self.linear(
            &format!("{p}.self_attn.q_proj"),
            h,
            d,
            heads * hd,
            s.qkv_bias,
            tr,
            false,
        );
        let k = self.linear(
            &format!("{p}.self_attn.k_proj"),
            h,
            d,
            kv * hd,
            s.qkv_bias,
            tr,
            false,
        );
        let v = self.linear(
            &format!("{p}.self_attn.v_proj"),
            h,
            d,
            kv * hd,
            s.qkv_bias,
            tr,
            false,
        );
        // apply_rotary_pos_emb: q*cos + rotate_half(q)*sin -> new q and k (cos/sin are small, shared)
        let q = self.rope(q);
        let k = self.rope(k);
        let a = match self.attn {
            Attention::Sdpa => self.t.sdpa(q, k, v, seq, seq, heads, hd),
            Attention::Eager => {
                // repeat_kv materialises k and v for every query head
                let (k, v) = if kv != heads {
                    let f = (heads / kv.max(1)) as f64;
                    let ke = self.t.elems(k) * f;
                    let kk = self.t.op(&[k], ke, self.t.dt(k), &[], 0.0, 0.0);
                    let vv = self.t.op(&[v], ke, self.t.dt(v), &[], 0.0, 0.0);
                    (kk, vv)
                } else {
                    (k, v)
                };
                let o = self.eager_attention(
                    q,
                    k,
                    v,
                    seq,
                    seq,
                    heads,
                    hd,
                    false,
                    s.attention_dropout,
                    1.0,
                );
                self.t.copy(o)
            }
        };
        let a = self.linear(
            &format!("{p}.self_attn.o_proj"),
            a,
            heads * hd,
            d,
            s.bias,
            tr,
            false,
        );
        let x = self.t.add(x, a);
        let h = self.rms_norm(&format!("{p}.post_attention_layernorm"), x, d, tr);
        let f = self.glu_mlp(p, h, d, s.ffn, s.act, s.bias);
        self.t.add(x, f)
    }

    /// transformers' `apply_rotary_pos_emb`: `x * cos + rotate_half(x) * sin`. `cos` and `sin`
    /// have the hidden states' dtype (`LlamaRotaryEmbedding.forward` returns `cos.to(x.dtype)`),
    /// fp32 under autocast, so a bf16 q or k gives fp32 products and sum. `rotate_half` is
    /// `cat((-x2, x1))`: a half-size negation, then the concatenation.
    fn rope(&mut self, x: T) -> T {
        let a = self.t.mul_const(x);
        let (e, dt) = (self.t.elems(x), self.t.dt(x));
        let neg = self.t.op(&[x], e / 2.0, dt, &[], 0.0, e / 2.0);
        let r = self.t.op(&[neg, x], e, dt, &[], 0.0, 0.0);
        let b = self.t.mul_const(r);
        self.t.add(a, b)
    }

    /// `down(act(gate(x)) * up(x))`.
    fn glu_mlp(&mut self, p: &str, h: T, d: u64, ffn: u64, act: Act, bias: bool) -> T {
        let tr = self.trainable();
        let (gn, un, dn) = if matches!(act, Act::GatedGeluNew) {
            (format!("{p}.wi_0"), format!("{p}.wi_1"), format!("{p}.wo"))
        } else {
            (
                format!("{p}.mlp.gate_proj"),
                format!("{p}.mlp.up_proj"),
                format!("{p}.mlp.down_proj"),
            )
        };
        let g = self.linear(&gn, h, d, ffn, bias, tr, false);
        let u = self.linear(&un, h, d, ffn, bias, tr, false);
        let g = match act {
            Act::GatedGeluNew => self.act(Act::GeluNewPython, g, None),
            _ => self.t.unary_save_input(g), // SiLU saves its input
        };
        let m = self.t.mul(g, u);
        self.linear(&dn, m, ffn, d, bias, tr, false)
    }

    /// A feed-forward activation.
    fn act(&mut self, act: Act, x: T, _gate: Option<T>) -> T {
        match act {
            Act::Gelu | Act::GeluTanh | Act::SwiGlu => self.t.unary_save_input(x),
            Act::Relu => self.t.unary_save_output(x),
            Act::GeluNewPython | Act::GatedGeluNew => {
                // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3))))
                let xf = self.t.autocast_f32(x); // pow is on autocast's fp32 list
                let p3 = self.t.unary_save_input(xf);
                let p3 = self.t.scalar(p3);
                let inner = self.t.add(x, p3);
                let inner = self.t.scalar(inner);
                let th = self.t.unary_save_output(inner);
                let one_plus = self.t.scalar(th);
                let half = self.t.scalar(x);
                self.t.mul(half, one_plus)
            }
        }
    }

    // ------------------------------------------------------------------ T5
    fn t5(&mut self, s: &T5Spec) {
        let src = self.shape.seq_len as f64;
        let tgt = self.shape.target_len as f64;
        let d = s.d_model;
        let inner = s.heads * s.d_kv;
        let tr = self.trainable();
        let ids = self.t.input(src, Dt::I64);
        let _labels = self.t.input(tgt, Dt::I64);
        let _dec_ids = self.t.constant(tgt, Dt::I64);
        self.t.enter("encoder.embed_tokens", "shared", false);
        let mut h = self.t.embedding("shared", ids, s.vocab, d, tr);
        h = self.t.dropout(h, s.dropout);
        // relative position bias: [1, heads, s, s] from a small table, computed once per stack
        self.t.param(
            "encoder.relative_attention_bias",
            s.relative_buckets,
            s.heads,
            tr,
            false,
        );
        let enc_bias = self.t.op(&[], 0.0, Dt::F32, &[], 0.0, 0.0);
        for i in 0..s.layers {
            let p = format!("encoder.block.{i}");
            self.t.enter(&p, "encoder.block", true);
            h = self.t5_self_attn(&p, s, h, src, false, enc_bias);
            h = self.t5_ff(&p, s, h);
        }
        self.t.enter("encoder.final_layer_norm", "encoder", false);
        let enc = self.rms_norm("encoder.final_layer_norm", h, d, tr);
        let enc = self.t.dropout(enc, s.dropout);
        // decoder
        self.t.enter("decoder.embed_tokens", "shared", false);
        let dids = self.t.constant(tgt, Dt::I64);
        let mut y = self.t.op(
            &[dids],
            tgt * d as f64,
            self.t.mode.act_dt(),
            &[dids],
            0.0,
            0.0,
        );
        y = self.t.dropout(y, s.dropout);
        self.t.param(
            "decoder.relative_attention_bias",
            s.relative_buckets,
            s.heads,
            tr,
            false,
        );
        for i in 0..s.decoder_layers {
            let p = format!("decoder.block.{i}");
            self.t.enter(&p, "decoder.block", true);
            y = self.t5_self_attn(&p, s, y, tgt, true, enc_bias);
            // cross attention: q from the decoder, k/v from the encoder output
            let n = self.rms_norm(&format!("{p}.layer.1.layer_norm"), y, d, tr);
            let q = self.linear(
                &format!("{p}.layer.1.EncDecAttention.q"),
                n,
                d,
                inner,
                false,
                tr,
                false,
            );
            let k = self.linear(
                &format!("{p}.layer.1.EncDecAttention.k"),
                enc,
                d,
                inner,
                false,
                tr,
                false,
            );
            let v = self.linear(
                &format!("{p}.layer.1.EncDecAttention.v"),
                enc,
                d,
                inner,
                false,
                tr,
                false,
            );
            let a = self.t5_attention(q, k, v, tgt, src, s, false);
            let a = self.linear(
                &format!("{p}.layer.1.EncDecAttention.o"),
                a,
                inner,
                d,
                false,
                tr,
                false,
            );
            let a = self.t.dropout(a, s.dropout);
            y = self.t.add(y, a);
            y = self.t5_ff(&p, s, y);
        }
        self.t.enter("lm_head", "lm_head", false);
        let y = self.rms_norm("decoder.final_layer_norm", y, d, tr);
        let y = self.t.dropout(y, s.dropout);
        let logits = if s.tied_embeddings {
            let y = self.t.scalar(y); // sequence_output * d_model ** -0.5
            self.t
                .linear_shared("shared", y, d, s.vocab, false, tr, false, true)
        } else {
            self.t.linear("lm_head", y, d, s.vocab, false, tr, false)
        };
        // `T5ForConditionalGeneration` calls `CrossEntropyLoss` on the logits as they are
        self.t.pin(logits);
        self.t.cross_entropy(logits, tgt, s.vocab);
        self.t.leave();
    }

    #[allow(clippy::too_many_arguments)]
    /// `learned_mask`: self-attention, whose SDPA mask is the learned relative position bias;
    /// the fused kernels refuse a mask that requires grad, so SDPA takes its math path.
    /// Cross-attention's mask (zeros) needs no grad and gets the fused kernels.
    fn t5_attention(
        &mut self,
        q: T,
        k: T,
        v: T,
        qt: f64,
        kt: f64,
        s: &T5Spec,
        learned_mask: bool,
    ) -> T {
        let o = match self.attn {
            Attention::Sdpa if learned_mask => self
                .t
                .sdpa_math(q, k, v, qt, kt, s.heads, s.d_kv, s.dropout),
            Attention::Sdpa => self.t.sdpa(q, k, v, qt, kt, s.heads, s.d_kv),
            // T5Attention: scores = q @ k^T; scores += position_bias; softmax(scores.float())
            // .type_as(scores); dropout; @ v
            Attention::Eager => {
                self.eager_attention(q, k, v, qt, kt, s.heads, s.d_kv, false, s.dropout, 1.0)
            }
        };
        // then transpose(1, 2).contiguous()
        self.t.copy(o)
    }

    fn t5_self_attn(&mut self, p: &str, s: &T5Spec, x: T, seq: f64, dec: bool, _bias: T) -> T {
        let d = s.d_model;
        let inner = s.heads * s.d_kv;
        let tr = self.trainable();
        let _ = dec;
        let n = self.rms_norm(&format!("{p}.layer.0.layer_norm"), x, d, tr);
        let q = self.linear(
            &format!("{p}.layer.0.SelfAttention.q"),
            n,
            d,
            inner,
            false,
            tr,
            false,
        );
        let k = self.linear(
            &format!("{p}.layer.0.SelfAttention.k"),
            n,
            d,
            inner,
            false,
            tr,
            false,
        );
        let v = self.linear(
            &format!("{p}.layer.0.SelfAttention.v"),
            n,
            d,
            inner,
            false,
            tr,
            false,
        );
        let a = self.t5_attention(q, k, v, seq, seq, s, true);
        let a = self.linear(
            &format!("{p}.layer.0.SelfAttention.o"),
            a,
            inner,
            d,
            false,
            tr,
            false,
        );
        let a = self.t.dropout(a, s.dropout);
        self.t.add(x, a)
    }

    fn t5_ff(&mut self, p: &str, s: &T5Spec, x: T) -> T {
        let d = s.d_model;
        let tr = self.trainable();
        let last = format!("{p}.layer.{}", if p.starts_with("decoder") { 2 } else { 1 });
        let n = self.rms_norm(&format!("{last}.layer_norm"), x, d, tr);
        let f = match s.act {
            Act::GatedGeluNew => {
                let f = self.glu_mlp(
                    &format!("{last}.DenseReluDense"),
                    n,
                    d,
                    s.d_ff,
                    Act::GatedGeluNew,
                    false,
                );
                f
            }
            _ => {
                let h = self.linear(
                    &format!("{last}.DenseReluDense.wi"),
                    n,
                    d,
                    s.d_ff,
                    false,
                    tr,
                    false,
                );
                let h = self.act(s.act, h, None);
                let h = self.t.dropout(h, s.dropout);
                self.linear(
                    &format!("{last}.DenseReluDense.wo"),
                    h,
                    s.d_ff,
                    d,
                    false,
                    tr,
                    false,
                )
            }
        };
        let f = self.t.dropout(f, s.dropout);
        self.t.add(x, f)
    }

    // ------------------------------------------------------------------ ViT
    /// A ViT over `frames` images of `image` pixels. With `classes > 0` returns the logits
    /// (timm classifier), else the patch tokens after the final norm (DINOv2
    /// `get_intermediate_layers(x)[0]`, cls token dropped).
    fn vit(&mut self, s: &VitSpec, img: T, image: u64, classes: u64, prefix: &str) -> T {
        let d = s.dim;
        let tr = !s.frozen && self.trainable();
        let was = true;
        if s.frozen {
            self.t.set_grad_enabled(false);
        }
        let path = if s.path.is_empty() {
            prefix.to_string()
        } else {
            s.path.clone()
        };
        let dot = |x: &str| {
            if path.is_empty() {
                x.to_string()
            } else {
                format!("{path}.{x}")
            }
        };
        let grid = image / s.patch;
        let n_patch = grid * grid;
        let n = (n_patch + 1) as f64 * s.frames as f64;
        self.t
            .enter(&dot("patch_embed"), &dot("patch_embed"), false);
        let x = self.t.conv2d(
            &dot("patch_embed.proj"),
            img,
            s.in_chans,
            d,
            s.patch,
            n_patch * s.frames,
            true,
            tr,
        );
        let _ = self.t.param(&dot("cls_token"), 1, d, tr, false);
        let pos_rows = if s.pos_grid > 0 {
            s.pos_grid * s.pos_grid + 1
        } else {
            n_patch + 1
        };
        self.t.param(&dot("pos_embed"), pos_rows, d, tr, false);
        if s.mask_token {
            self.t.param(&dot("mask_token"), 1, d, false, false);
        }
        // DINOv2 adds the interpolated position table to the patches, then cats the cls token;
        // timm cats first then adds: either way one new [n, d] tensor per frame, no saves
        let x = if s.pos_grid > 0 {
            let pe = self.t.add_param(x, 0, tr);
            self.t.cat(&[pe])
        } else {
            let c = self.t.cat(&[x]);
            self.t.add_param(c, 0, tr)
        };
        let x = self.t.op(
            &[x],
            n * d as f64,
            self.t.dt(x),
            &[],
            if tr { (pos_rows * d + d) as f64 } else { 0.0 },
            0.0,
        );
        let attn = s.attention.unwrap_or(self.attn);
        let mut x = x;
        let hd = d / s.heads;
        let ffn = (d as f64 * s.mlp_ratio) as u64;
        for i in 0..s.depth {
            let p = dot(&format!("blocks.{i}"));
            self.t.enter(&p, &dot("blocks"), true);
            let h = self.t.layer_norm(&format!("{p}.norm1"), x, d, true, tr);
            let qkv = self
                .t
                .linear(&format!("{p}.attn.qkv"), h, d, 3 * d, true, tr, false);
            let a = match attn {
                Attention::Sdpa => {
                    self.t
                        .sdpa(qkv, qkv, qkv, n, n / s.frames as f64 * 1.0, s.heads, hd)
                }
                Attention::Eager => {
                    // (q * scale) @ k^T, softmax, @ v; q/k/v are permuted views of qkv, so
                    // bmm's reshape copies k^T and v; the output transpose+reshape copies too
                    let per = n / s.frames as f64;
                    let o = self.eager_attention(
                        qkv,
                        qkv,
                        qkv,
                        n,
                        per,
                        s.heads,
                        hd,
                        true,
                        0.0,
                        s.frames as f64,
                    );
                    self.t.copy(o)
                }
            };
            let a = self
                .t
                .linear(&format!("{p}.attn.proj"), a, d, d, true, tr, false);
            let a = if s.layerscale {
                self.t.param(&format!("{p}.ls1"), 1, d, tr, false);
                self.t.mul_param(a, d, tr)
            } else {
                a
            };
            x = self.t.add(x, a);
            let h = self.t.layer_norm(&format!("{p}.norm2"), x, d, true, tr);
            let f = self
                .t
                .linear(&format!("{p}.mlp.fc1"), h, d, ffn, true, tr, false);
            let f = self.t.unary_save_input(f);
            let f = self
                .t
                .linear(&format!("{p}.mlp.fc2"), f, ffn, d, true, tr, false);
            let f = if s.layerscale {
                self.t.param(&format!("{p}.ls2"), 1, d, tr, false);
                self.t.mul_param(f, d, tr)
            } else {
                f
            };
            x = self.t.add(x, f);
        }
        self.t.enter(&dot("norm"), &dot("norm"), false);
        let x = self.t.layer_norm(&dot("norm"), x, d, true, tr);
        let out = if classes > 0 {
            // pool 'token': x[:, 0]; head Linear(d, classes)
            let c = self.t.op(&[x], d as f64, self.t.dt(x), &[], 0.0, 0.0);
            self.t.linear(&dot("head"), c, d, classes, true, tr, false)
        } else {
            // [:, 1:] then reshape(B, -1, D): a copy of the patch tokens
            self.t.op(
                &[x],
                (n_patch * s.frames * d) as f64,
                self.t.dt(x),
                &[],
                0.0,
                0.0,
            )
        };
        if s.frozen && was {
            self.t.set_grad_enabled(true);
        }
        self.t.leave();
        out
    }

    // ------------------------------------------------------------------ ResNet
    fn resnet(&mut self, s: &ResNetSpec) {
        let img = self.shape.image;
        let tr = self.trainable();
        let x = self.t.input((3 * img * img) as f64, self.t.mode.act_dt());
        let _y = self.t.input(1.0, Dt::I64);
        self.t.enter("stem", "stem", false);
        // every stride-2 layer of a ResNet (7x7 pad 3, 3x3 pad 1, max pool 3 pad 1, 1x1 pad 0)
        // gives floor((H + 2p - k) / 2) + 1 = ceil(H / 2) rows
        let conv1 = img.div_ceil(2);
        let hw = conv1 * conv1;
        let x = self.t.conv2d("conv1", x, 3, 64, 7, hw, false, tr);
        let x = self.t.batch_norm("bn1", x, 64, tr);
        let x = self.t.relu_inplace(x);
        // max_pool2d_with_indices saves its input and the int64 indices
        let side = conv1.div_ceil(2);
        let mp = self.t.op(
            &[x],
            (64 * side * side) as f64,
            self.t.dt(x),
            &[x],
            0.0,
            0.0,
        );
        let idx_t = self.t.constant((64 * side * side) as f64, Dt::I64);
        if self.t.info(mp).requires_grad {
            let n = self.t.ops.len() - 1;
            self.t.tensors[idx_t.0].savers.push(n);
        }
        let mut x = mp;
        let mut cin = 64u64;
        let mut side = side;
        let exp = if s.bottleneck { 4 } else { 1 };
        for (li, &nblocks) in s.layers.iter().enumerate() {
            let planes = 64u64 << li;
            for bi in 0..nblocks {
                let stride = if bi == 0 && li > 0 { 2 } else { 1 };
                let so = side.div_ceil(stride);
                let hw_o = so * so;
                let p = format!("layer{}.{}", li + 1, bi);
                self.t.enter(&p, &format!("layer{}", li + 1), true);
                let cout = planes * exp;
                let idn = if bi == 0 && (stride != 1 || cin != cout) {
                    let dsc = self.t.conv2d(
                        &format!("{p}.downsample.0"),
                        x,
                        cin,
                        cout,
                        1,
                        hw_o,
                        false,
                        tr,
                    );
                    Some(
                        self.t
                            .batch_norm(&format!("{p}.downsample.1"), dsc, cout, tr),
                    )
                } else {
                    None
                };
                let out = if s.bottleneck {
                    let w = planes * s.width_per_group / 64;
                    let h =
                        self.t
                            .conv2d(&format!("{p}.conv1"), x, cin, w, 1, side * side, false, tr);
                    let h = self.t.batch_norm(&format!("{p}.bn1"), h, w, tr);
                    let h = self.t.relu_inplace(h);
                    let h = self
                        .t
                        .conv2d(&format!("{p}.conv2"), h, w, w, 3, hw_o, false, tr);
                    let h = self.t.batch_norm(&format!("{p}.bn2"), h, w, tr);
                    let h = self.t.relu_inplace(h);
                    let h = self
                        .t
                        .conv2d(&format!("{p}.conv3"), h, w, cout, 1, hw_o, false, tr);
                    self.t.batch_norm(&format!("{p}.bn3"), h, cout, tr)
                } else {
                    let h =
                        self.t
                            .conv2d(&format!("{p}.conv1"), x, cin, planes, 3, hw_o, false, tr);
                    let h = self.t.batch_norm(&format!("{p}.bn1"), h, planes, tr);
                    let h = self.t.relu_inplace(h);
                    let h =
                        self.t
                            .conv2d(&format!("{p}.conv2"), h, planes, planes, 3, hw_o, false, tr);
                    self.t.batch_norm(&format!("{p}.bn2"), h, planes, tr)
                };
                // out += identity (in place, saves nothing); relu(inplace) saves the result
                let idn = idn.unwrap_or(x);
                let o = self.t.op(
                    &[out, idn],
                    self.t.elems(out),
                    self.t.dt(out),
                    &[],
                    0.0,
                    0.0,
                );
                x = self.t.relu_inplace(o);
                cin = cout;
                side = so;
            }
        }
        self.t.enter("fc", "fc", false);
        // adaptive_avg_pool2d saves its input (already kept by the last relu)
        let pooled = self
            .t
            .op(&[x], cin as f64, self.t.dt(x), &[x], 0.0, self.t.elems(x));
        let logits = self
            .t
            .linear("fc", pooled, cin, self.shape.classes, true, tr, false);
        self.t.cross_entropy(logits, 1.0, self.shape.classes);
        self.t.leave();
    }

    // ------------------------------------------------------------------ NavDP
    fn navdp(&mut self, s: &NavDpSpec) {
        let d = s.dim;
        let img = s.image;
        let official = s.variant == "official";
        let mode = self.t.mode;
        let act = mode.act_dt();
        let frames = s.memory_size;
        let depth_frames = if official { 1 } else { s.depth_frames };
        // batch: rgb [T,S,S,3], depth [Td,S,S,1], point, labels, augments, critics (+ goals)
        let rgb = self.t.input((frames * img * img * 3) as f64, act);
        let depth = self.t.input((depth_frames * img * img) as f64, act);
        let point = self.t.input(3.0, act);
        let labels = self.t.input((s.predict_size * 3) as f64, act);
        let augments = self.t.input((s.predict_size * 3) as f64, act);
        let _c1 = self.t.input(1.0, act);
        let _c2 = self.t.input(1.0, act);
        let goals = if official {
            Some((
                self.t.input((img * img * 6) as f64, act),
                self.t.input((img * img * 4) as f64, act),
            ))
        } else {
            None
        };
        let vit = |path: &str, in_chans: u64, frames: u64, frozen: bool| VitSpec {
            path: path.to_string(),
            image: img,
            patch: 14,
            in_chans,
            dim: d,
            depth: s.vit_depth,
            heads: s.vit_heads,
            mlp_ratio: 4.0,
            frames,
            layerscale: true,
            classes: 0,
            pos_grid: 37,
            mask_token: true,
            frozen,
            attention: None,
        };
        // (rgb.permute.reshape - mean) / std: three full-size copies without grad
        self.t.enter("rgb_model", "rgb_model", false);
        let r = self.t.copy(rgb);
        let r = self.t.scalar(r);
        let r = self.t.scalar(r);
        let img_tok = self.vit(&vit("rgb_model", 3, frames, s.freeze_rgb), r, img, 0, "");
        // `forward`'s locals (rgb, img_tok, dep, dep_tok, mem, the conditions...) stay referenced
        // until it returns, after the losses: `img_tok` is a view of the ViT's final norm output
        self.t.pin(r);
        let rgb_norm = self.t.operand(img_tok, 0);
        self.t.pin(rgb_norm);
        self.t.enter("depth_model", "depth_model", false);
        // depth.reshape(...).repeat(1,1,1,3): a 3-channel copy
        let dd = self.t.op(
            &[depth],
            (depth_frames * img * img * 3) as f64,
            act,
            &[],
            0.0,
            0.0,
        );
        let dep_tok = self.vit(&vit("depth_model", 3, depth_frames, false), dd, img, 0, "");
        self.t.pin(dd);
        let depth_norm = self.t.operand(dep_tok, 0);
        self.t.pin(depth_norm);
        self.t.enter("memory", "memory", false);
        let tokens = self.t.cat(&[img_tok, dep_tok]);
        self.t.pin(tokens);
        let n_tok = (frames + depth_frames) * (img / 14) * (img / 14);
        let (mem, n_mem, n_prefix) = if !official {
            // adaptive_avg_pool1d over the transposed tokens: saves its input
            let m = self.t.op(
                &[tokens],
                (s.tokens * d) as f64,
                self.t.dt(tokens),
                &[tokens],
                0.0,
                (n_tok * d) as f64,
            );
            (m, s.tokens, 2u64)
        } else {
            let n_mem = s.memory_size * 16;
            let tr = self.trainable();
            self.t.param("former_query", n_mem, d, tr, true);
            self.t
                .param("former_pe", (s.memory_size + 1) * 256, d, tr, true);
            let mem_in = self.t.add_param(tokens, 0, tr);
            let mut q = self
                .t
                .param_lookup("former_query.weight", 0, 0, (n_mem * d) as f64, tr);
            for i in 0..2 {
                let p = format!("former_net.{i}");
                self.t.enter(&p, "former_net", true);
                q = self.torch_decoder_layer(
                    &p,
                    q,
                    mem_in,
                    n_mem as f64,
                    n_tok as f64,
                    d,
                    8,
                    2048,
                    false,
                    false,
                    0.1,
                );
            }
            self.t.enter("rgbd_project", "rgbd_project", false);
            let m = self.t.linear("rgbd_project", q, d, d, true, tr, false);
            (m, n_mem, 4u64)
        };
        self.t.pin(mem);
        let tr = self.trainable();
        self.t.enter("heads", "heads", false);
        let pg = self.t.linear("point_encoder", point, 3, d, true, tr, false);
        self.t.param("input_embed", d, 3, tr, true);
        self.t.param("input_embed.bias", 1, d, tr, false);
        // noisy(): two noised action sequences through input_embed
        let nx = self.t.constant((s.predict_size * 3) as f64, act);
        let ng_x = self
            .t
            .linear_shared("input_embed", nx, 3, d, true, tr, false, true);
        let gx = self.t.constant((s.predict_size * 3) as f64, act);
        let g_x = self
            .t
            .linear_shared("input_embed", gx, 3, d, true, tr, false, true);
        let n_cond = n_prefix + n_mem;
        self.t.param("cond_pos_embed", n_cond, d, tr, true);
        self.t.param("out_pos_embed", s.predict_size, d, tr, true);
        let mut aux_goals: Vec<T> = Vec::new();
        if let Some((ig, xg)) = goals {
            let ie = self.vit(&vit("image_encoder", 6, 1, false), ig, img, 0, "");
            let pe = self.vit(&vit("pixel_encoder", 4, 1, false), xg, img, 0, "");
            self.t.enter("goal_heads", "goal_heads", false);
            for (name, e) in [("image_project", ie), ("pixel_project", pe)] {
                let m = self.t.op(&[e], d as f64, self.t.dt(e), &[], 0.0, 0.0);
                let pj = self.t.linear(name, m, d, d, true, tr, false);
                aux_goals.push(pj);
            }
            let a = self
                .t
                .linear("image_aux_head", aux_goals[0], d, 3, true, tr, false);
            let _ = self.t.mse_loss(a);
            let b = self
                .t
                .linear("pixel_aux_head", aux_goals[1], d, 3, true, tr, false);
            let _ = self.t.mse_loss(b);
        }
        // conditions: drop(cat([t, goal(s), mem]) + cond_pos)
        // time_emb(t): one sinusoidal token per sample, no parameters
        let time_tok = self.t.constant(d as f64, Dt::F32);
        let mut parts = vec![time_tok, pg];
        parts.extend(aux_goals.iter().copied());
        parts.push(mem);
        let c = self.t.cat(&parts);
        let c = self.t.add_param(c, (n_cond * d) as f64 as u64, tr);
        let ng_c = self.t.dropout(c, 0.1);
        let c2 = self.t.cat(&parts);
        let c2 = self.t.add_param(c2, 0, tr);
        let g_c = self.t.dropout(c2, 0.1);
        for t in [pg, ng_x, g_x, ng_c, g_c] {
            self.t.pin(t);
        }
        let pred = s.predict_size as f64;
        let mut passes: Vec<(T, T)> = Vec::new();
        let a0 = self
            .t
            .add_param(ng_x, (s.predict_size * d) as f64 as u64, tr);
        passes.push((self.t.dropout(a0, 0.1), ng_c));
        let a1 = self.t.add_param(g_x, 0, tr);
        passes.push((self.t.dropout(a1, 0.1), g_c));
        for key in [labels, augments] {
            let e = self
                .t
                .linear_shared("input_embed", key, 3, d, true, false, false, true);
            let e = self.t.add_param(e, 0, tr);
            passes.push((self.t.dropout(e, 0.1), ng_c));
        }
        for (pi, (tgt, cond)) in passes.into_iter().enumerate() {
            let mut x = tgt;
            for l in 0..s.temporal_depth {
                let p = format!("decoder.{l}");
                self.t.enter(&format!("{p}#pass{pi}"), "decoder", true);
                x = self.torch_decoder_layer(
                    &p,
                    x,
                    cond,
                    pred,
                    n_cond as f64,
                    d,
                    s.heads,
                    4 * d,
                    true,
                    pi > 0,
                    0.1,
                );
            }
            self.t.enter("layernorm", "heads", false);
            let x = self.t.layer_norm_shared("layernorm", x, d, true, tr);
            let y = if pi < 2 {
                self.t
                    .linear_shared("action_head", x, d, 3, true, tr, false, true)
            } else {
                let m = self.t.op(&[x], d as f64, self.t.dt(x), &[], 0.0, 0.0);
                self.t
                    .linear_shared("critic_head", m, d, 1, true, tr, false, true)
            };
            let _ = self.t.mse_loss(y);
        }
        self.t.param("layernorm", 1, 2 * d, tr, false);
        self.t.param("action_head", 3, d + 1, tr, true);
        self.t.param("critic_head", 1, d + 1, tr, true);
        self.t.leave();
    }

    /// `nn.TransformerDecoderLayer(d, heads, ffn, dropout, gelu|relu, batch_first=True)` in
    /// training: self-attention, cross-attention over `mem`, feed-forward, through
    /// `F.multi_head_attention_forward` with `need_weights=False` (so SDPA's fused kernels).
    /// `shared`: the parameters were already registered (another pass through the same layer).
    #[allow(clippy::too_many_arguments)]
    fn torch_decoder_layer(
        &mut self,
        p: &str,
        x: T,
        mem: T,
        tq: f64,
        tk: f64,
        d: u64,
        heads: u64,
        ffn: u64,
        norm_first: bool,
        shared: bool,
        dropout: f64,
    ) -> T {
        let tr = self.trainable();
        if !shared {
            for (n, r, c) in [
                ("self_attn.in_proj_weight", 3 * d, d),
                ("self_attn.out_proj", d, d),
                ("multihead_attn.in_proj_weight", 3 * d, d),
                ("multihead_attn.out_proj", d, d),
                ("linear1", ffn, d),
                ("linear2", d, ffn),
            ] {
                self.t.param(&format!("{p}.{n}"), r, c, tr, true);
                self.t.param(&format!("{p}.{n}.bias"), 1, r, tr, false);
            }
            for n in ["norm1", "norm2", "norm3"] {
                self.t.param(&format!("{p}.{n}"), 2, d, tr, false);
            }
        }
        let hd = d / heads;
        let ln = |b: &mut Self, x: T| {
            let xi = b.t.autocast_f32(x);
            let e = b.t.elems(xi);
            let dt = b.t.dt(xi);
            let rows = e / d as f64;
            let y = b.t.op(
                &[xi],
                e,
                dt,
                &[xi],
                if tr { (2 * d) as f64 } else { 0.0 },
                8.0 * e,
            );
            let _ = rows;
            y
        };
        // self-attention block
        let sa = |b: &mut Self, h: T| {
            // batch_first: the input is transposed, so linear(3-D non-contiguous) -> matmul copies it;
            // in_projection_packed: proj.unflatten(...).transpose(...).contiguous()
            let proj = b.t.linear_shared(
                &format!("{p}.self_attn.in_proj_weight"),
                h,
                d,
                3 * d,
                true,
                tr,
                true,
                true,
            );
            let proj = b.t.copy(proj);
            let o = b.t.sdpa(proj, proj, proj, tq, tq, heads, hd);
            // attn_output.permute(2, 0, 1, 3).contiguous()
            let o = b.t.copy(o);
            b.t.linear_shared(
                &format!("{p}.self_attn.out_proj"),
                o,
                d,
                d,
                true,
                tr,
                false,
                true,
            )
        };
        let ca = |b: &mut Self, h: T| {
            let q = b.t.linear_shared(
                &format!("{p}.multihead_attn.in_proj_weight.q"),
                h,
                d,
                d,
                true,
                tr,
                true,
                false,
            );
            let kv = b.t.linear_shared(
                &format!("{p}.multihead_attn.in_proj_weight.kv"),
                mem,
                d,
                2 * d,
                true,
                tr,
                true,
                false,
            );
            let kv = b.t.copy(kv);
            let o = b.t.sdpa(q, kv, kv, tq, tk, heads, hd);
            let o = b.t.copy(o);
            b.t.linear_shared(
                &format!("{p}.multihead_attn.out_proj"),
                o,
                d,
                d,
                true,
                tr,
                false,
                true,
            )
        };
        let ff = |b: &mut Self, h: T| {
            let f =
                b.t.linear_shared(&format!("{p}.linear1"), h, d, ffn, true, tr, false, true);
            let f = if norm_first {
                b.t.unary_save_input(f)
            } else {
                b.t.unary_save_output(f)
            };
            let f = b.t.dropout(f, dropout);
            b.t.linear_shared(&format!("{p}.linear2"), f, ffn, d, true, tr, false, true)
        };
        if norm_first {
            let h = ln(self, x);
            let a = sa(self, h);
            let a = self.t.dropout(a, dropout);
            let x = self.t.add(x, a);
            let h = ln(self, x);
            let a = ca(self, h);
            let a = self.t.dropout(a, dropout);
            let x = self.t.add(x, a);
            let h = ln(self, x);
            let f = ff(self, h);
            let f = self.t.dropout(f, dropout);
            self.t.add(x, f)
        } else {
            let a = sa(self, x);
            let a = self.t.dropout(a, dropout);
            let x = self.t.add(x, a);
            let x = ln(self, x);
            let a = ca(self, x);
            let a = self.t.dropout(a, dropout);
            let x = self.t.add(x, a);
            let x = ln(self, x);
            let f = ff(self, x);
            let f = self.t.dropout(f, dropout);
            let x = self.t.add(x, f);
            ln(self, x)
        }
    }
}
