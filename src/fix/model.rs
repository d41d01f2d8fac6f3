//! Edits in the model's own code: activation checkpointing around the repeated blocks
//! (`for blk in self.blocks: x = blk(x)`) and eager softmax attention rewritten to
//! `F.scaled_dot_product_attention` with the same scale, mask and dropout.
use tree_sitter::Node;

use super::edit::Cx;
use super::project::Project;
use super::py::{self, PyFile};
use super::trainers::Setup;
use super::{Knob, Msg, M};
use crate::knobs::{Attention, Checkpointing, Precision};

pub fn apply_rules(cx: &mut Cx, s: &Setup) {
    if matches!(
        cx.t.precision,
        Some(Precision::Bf16Mixed | Precision::Fp16Mixed)
    ) {
        half_weights(cx);
    }
    if let Some(ck) = cx.t.checkpointing {
        if ck != Checkpointing::None && !s.hf_ckpt_flag.get() {
            checkpointing(cx, ck);
        }
    }
    match cx.t.attention {
        Some(Attention::Sdpa) => attention(cx),
        Some(Attention::Eager) => cx.note(Knob::Attention, M::AttnEager, &[]),
        None => {}
    }
}

/// Mixed precision keeps fp32 weights and casts per op; a model loaded in half precision
/// (`from_pretrained(..., torch_dtype=torch.float16)`) would be trained in half precision, and
/// fp16's GradScaler refuses its gradients ("Attempting to unscale FP16 gradients").
fn half_weights(cx: &mut Cx) {
    let p = cx.p;
    for f in &p.py {
        for n in f.all_nodes() {
            if n.kind() != "call" || !py::callee(f, n).ends_with("from_pretrained") {
                continue;
            }
            let half = ["torch_dtype", "dtype"].iter().find_map(|k| {
                py::kwarg_value(f, n, k)
                    .map(|v| f.text(v))
                    .filter(|t| t.contains("float16") || t.contains("half"))
            });
            if let Some(dtype) = half {
                let at = format!("{}:{}", f.rel, f.line_of(n.start_byte()));
                cx.note(Knob::Precision, M::HalfWeights, &[&at, &dtype]);
            }
        }
    }
}

/// A loop over a module list whose body calls each block on the running tensor.
struct BlockLoop<'p> {
    fi: usize,
    class: String,
    attr: String,
    /// The call `blk(x, ...)` to wrap.
    call: Node<'p>,
    var: String,
}

fn block_loops(p: &Project) -> Vec<BlockLoop<'_>> {
    let mut out = Vec::new();
    let lists = module_lists(p);
    for (fi, f) in p.py.iter().enumerate() {
        for n in f.all_nodes() {
            if n.kind() != "for_statement" {
                continue;
            }
            let Some(class) = py::ancestor(n, &["class_definition"]) else {
                continue;
            };
            if py::ancestor(n, &["function_definition"]).is_none() {
                continue;
            }
            let (Some(left), Some(right)) = (
                n.child_by_field_name("left"),
                n.child_by_field_name("right"),
            ) else {
                continue;
            };
            let mut it = right;
            let mut var_node = left;
            if it.kind() == "call" && py::callee(f, it) == "enumerate" {
                match py::positional(it).into_iter().next() {
                    Some(a) => it = a,
                    None => continue,
                }
                if let Some(last) = py::named_children(left).last() {
                    var_node = *last;
                }
            }
            let it_text: String = f.text(it).split_whitespace().collect();
            let Some(attr) = it_text.strip_prefix("self.") else {
                continue;
            };
            if attr.contains(['[', '(']) || var_node.kind() != "identifier" {
                continue;
            }
            let var = f.text(var_node).to_string();
            if !lists.contains(attr) {
                continue;
            }
            let Some(body) = n.child_by_field_name("body") else {
                continue;
            };
            if f.text(body).contains("checkpoint(") {
                continue;
            }
            for st in py::named_children(body) {
                let Some(a) = st
                    .named_child(0)
                    .filter(|a| st.kind() == "expression_statement" && a.kind() == "assignment")
                else {
                    continue;
                };
                let Some(r) = a.child_by_field_name("right") else {
                    continue;
                };
                if r.kind() == "call" && py::callee(f, r) == var {
                    out.push(BlockLoop {
                        fi,
                        class: py::def_name(f, class).to_string(),
                        attr: attr.to_string(),
                        call: r,
                        var: var.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Attributes assigned `self.<attr> = nn.ModuleList(...)` / `nn.Sequential(...)` in the project,
/// and the lists inside a `self.<attr> = nn.ModuleDict(dict(h=nn.ModuleList(...)))` (or with a
/// `{"h": ...}` literal) as `<attr>.h`, as in GPT-2-style models (`self.transformer.h`).
fn module_lists(p: &Project) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for f in &p.py {
        for a in f.all_nodes() {
            if a.kind() != "assignment" {
                continue;
            }
            let (Some(l), Some(r)) = (
                a.child_by_field_name("left"),
                a.child_by_field_name("right"),
            ) else {
                continue;
            };
            let t = f.text(r);
            if let Some(attr) = f.text(l).strip_prefix("self.") {
                if t.contains("ModuleList") || t.contains("Sequential") {
                    out.insert(attr.to_string());
                }
                if r.kind() == "call" && py::callee(f, r).ends_with("ModuleDict") {
                    for (key, value) in dict_entries(f, py::positional(r).first().copied()) {
                        let v = f.text(value);
                        if v.contains("ModuleList") || v.contains("Sequential") {
                            out.insert(format!("{attr}.{key}"));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The entries of `dict(k=v, ...)` or `{"k": v, ...}`.
fn dict_entries<'t>(f: &PyFile, d: Option<Node<'t>>) -> Vec<(String, Node<'t>)> {
    let Some(d) = d else { return vec![] };
    let (items, keyword) = match d.kind() {
        "call" if py::callee(f, d) == "dict" => match d.child_by_field_name("arguments") {
            Some(a) => (py::named_children(a), true),
            None => return vec![],
        },
        "dictionary" => (py::named_children(d), false),
        _ => return vec![],
    };
    items
        .into_iter()
        .filter_map(|it| {
            let (key, value) = if keyword {
                (it.kind() == "keyword_argument").then_some(())?;
                let k = f.text(it.child_by_field_name("name")?).to_string();
                (k, it.child_by_field_name("value")?)
            } else {
                (it.kind() == "pair").then_some(())?;
                (
                    py::string_value(f, it.child_by_field_name("key")?)?,
                    it.child_by_field_name("value")?,
                )
            };
            Some((key, value))
        })
        .collect()
}

/// Attributes (`self.rgb_model = ViT(...)`) holding an instance of `class`.
fn instance_attrs(p: &Project, class: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in &p.py {
        for a in f.all_nodes() {
            if a.kind() != "assignment" {
                continue;
            }
            let (Some(l), Some(r)) = (
                a.child_by_field_name("left"),
                a.child_by_field_name("right"),
            ) else {
                continue;
            };
            if r.kind() == "call" && py::last_name(&py::callee(f, r)) == class {
                let lt = f.text(l);
                let name = lt.strip_prefix("self.").unwrap_or(lt);
                if !out.iter().any(|x| x == name) {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

/// Models loaded with `X.from_pretrained(...)` outside a Hugging Face Trainer: enable their
/// own checkpointing right after loading. Returns whether any was found.
fn hf_loaded_models(cx: &mut Cx) -> bool {
    let p = cx.p;
    let mut any = false;
    for f in p.py.iter() {
        for st in f.all_nodes() {
            if st.kind() != "expression_statement"
                || !matches!(st.parent().map(|x| x.kind()), Some("block" | "module"))
            {
                continue;
            }
            let Some(a) = st.named_child(0).filter(|a| a.kind() == "assignment") else {
                continue;
            };
            let (Some(l), Some(r)) = (
                a.child_by_field_name("left"),
                a.child_by_field_name("right"),
            ) else {
                continue;
            };
            if r.kind() != "call" {
                continue;
            }
            let c = py::callee(f, r);
            if !(c.ends_with(".from_pretrained") && (c.contains("Model") || c.contains("For"))) {
                continue;
            }
            any = true;
            let target = f.text(l).to_string();
            if f.src
                .contains(&format!("{target}.gradient_checkpointing_enable("))
            {
                continue;
            }
            let ind = f.indent_at(st.start_byte()).to_string();
            let at = f.line_end_incl(st.end_byte());
            let rel = f.rel.clone();
            let text = format!("{ind}{target}.gradient_checkpointing_enable(gradient_checkpointing_kwargs={{\"use_reentrant\": False}})\n");
            cx.edit(
                &rel,
                at,
                at,
                text,
                Knob::Checkpointing,
                Some(Msg::new(M::CkptHfEnable, &[&target])),
            );
        }
    }
    any
}

fn checkpointing(cx: &mut Cx, ck: Checkpointing) {
    let p = cx.p;
    let hf_models = ck == Checkpointing::Full && hf_loaded_models(cx);
    let loops = block_loops(p);
    let mut chosen: Vec<&BlockLoop> = Vec::new();
    if ck == Checkpointing::Full {
        chosen = loops.iter().collect();
    } else {
        for path in cx.t.checkpoint_modules.clone() {
            let segs: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
            let mut any = false;
            for l in &loops {
                // The path ends with the loop's attribute (`blocks`, or `transformer.h`); the
                // segment before it, if any, names the instance that owns it.
                let attr: Vec<&str> = l.attr.split('.').collect();
                if !segs.ends_with(&attr) {
                    continue;
                }
                let parent = segs.len().checked_sub(attr.len() + 1).map(|i| segs[i]);
                let owners = instance_attrs(p, &l.class);
                if let Some(parent) = parent {
                    if !owners.iter().any(|o| o == parent) {
                        continue;
                    }
                    let also: Vec<&String> =
                        owners.iter().filter(|o| o.as_str() != parent).collect();
                    if !also.is_empty() {
                        let also = also
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ");
                        cx.note(
                            Knob::Checkpointing,
                            M::CkptShared,
                            &[&path, &l.class, &also],
                        );
                    }
                }
                any = true;
                if !chosen.iter().any(|c| c.call == l.call) {
                    chosen.push(l);
                }
            }
            if !any {
                cx.note(Knob::Checkpointing, M::CkptNoMatch, &[&path]);
            }
        }
    }
    if chosen.is_empty() {
        if ck == Checkpointing::Full && !hf_models {
            cx.note(Knob::Checkpointing, M::CkptNoLoops, &[]);
        }
        return;
    }
    let mut names: std::collections::HashMap<usize, String> = std::collections::HashMap::new();
    for l in chosen {
        let f = &p.py[l.fi];
        let name = match names.get(&l.fi) {
            Some(n) => n.clone(),
            None => {
                let n = checkpoint_name(cx, l.fi);
                names.insert(l.fi, n.clone());
                n
            }
        };
        let call = l.call;
        let Some(args) = call.child_by_field_name("arguments") else {
            continue;
        };
        let inner = f.text(args);
        let inner = inner[1..inner.len() - 1].trim_end();
        let inner = inner.strip_suffix(',').unwrap_or(inner).trim();
        let orig = f.text(call);
        let sep = if inner.is_empty() { "" } else { ", " };
        let text = format!(
            "{name}({}{sep}{inner}, use_reentrant=False) if self.training else {orig}",
            l.var
        );
        let why = Msg::new(M::CkptWrap, &[&format!("{}.{}", l.class, l.attr), &l.var]);
        let rel = f.rel.clone();
        cx.edit(
            &rel,
            call.start_byte(),
            call.end_byte(),
            text,
            Knob::Checkpointing,
            Some(why),
        );
    }
}

/// The name under which `torch.utils.checkpoint.checkpoint` is called in file `fi` (adding the import).
fn checkpoint_name(cx: &mut Cx, fi: usize) -> String {
    let f = &cx.p.py[fi];
    if let Some(a) = py::import_alias(f, "torch.utils.checkpoint", "checkpoint") {
        return a;
    }
    let taken = f
        .all_nodes()
        .into_iter()
        .any(|n| n.kind() == "identifier" && f.text(n) == "checkpoint");
    if taken {
        cx.ensure_import(fi, "import torch.utils.checkpoint", Knob::Checkpointing);
        "torch.utils.checkpoint.checkpoint".into()
    } else {
        cx.ensure_import(
            fi,
            "from torch.utils.checkpoint import checkpoint",
            Knob::Checkpointing,
        );
        "checkpoint".into()
    }
}

/// The parts of an eager attention: what to pass to SDPA and which statements go away.
#[derive(Default, Debug)]
struct Eager<'p> {
    q: String,
    k: String,
    scale: Option<String>,
    mask: Option<String>,
    dropout: Option<String>,
    softmax: bool,
    /// Assignment statements of the chain (deleted).
    stmts: Vec<Node<'p>>,
}

fn attention(cx: &mut Cx) {
    let p = cx.p;
    let mut found = 0;
    let xformers = xformers_subclasses(p);
    let mut fnames: std::collections::HashMap<usize, String> = std::collections::HashMap::new();
    for (fi, f) in p.py.iter().enumerate() {
        for n in f.all_nodes() {
            let (pn, vn) = match matmul_operands(f, n) {
                Some(x) => x,
                None => continue,
            };
            let Some(func) = py::ancestor(n, &["function_definition"]) else {
                continue;
            };
            let mut e = Eager::default();
            if parse_probs(f, func, pn, n.start_byte(), &mut e).is_none()
                || !e.softmax
                || e.q.is_empty()
            {
                continue;
            }
            found += 1;
            let class = py::ancestor(n, &["class_definition"])
                .map(|c| py::def_name(f, c).to_string())
                .unwrap_or_default();
            let at = format!("{}:{}", f.rel, f.line_of(n.start_byte()));
            // xFormers dispatch: a subclass that uses xFormers when installed.
            if let Some(sub) = xformers.get(&class) {
                cx.note(Knob::Attention, M::AttnXformers, &[&sub, &class, &at]);
                continue;
            }
            // The intermediate names must not be used elsewhere (e.g. returned attention weights).
            let mut used_elsewhere = None;
            for st in &e.stmts {
                let Some(name) = st
                    .named_child(0)
                    .and_then(|a| a.child_by_field_name("left"))
                    .map(|l| f.text(l))
                else {
                    continue;
                };
                let uses = py::descendants(func).into_iter().filter(|x| {
                    x.kind() == "identifier"
                        && f.text(*x) == name
                        && !e.stmts.iter().any(|s| {
                            s.start_byte() <= x.start_byte() && x.end_byte() <= s.end_byte()
                        })
                        && !(n.start_byte() <= x.start_byte() && x.end_byte() <= n.end_byte())
                });
                if uses.count() > 0 {
                    used_elsewhere = Some(name.to_string());
                }
            }
            if let Some(name) = used_elsewhere {
                cx.note(Knob::Attention, M::AttnWeightsUsed, &[&at, &name]);
                continue;
            }
            let fname = match fnames.get(&fi) {
                Some(n) => n.clone(),
                None => {
                    let n = functional_name(cx, fi);
                    fnames.insert(fi, n.clone());
                    n
                }
            };
            let mut args = vec![e.q.clone(), e.k.clone(), f.text(vn).to_string()];
            if let Some(m) = &e.mask {
                args.push(format!("attn_mask={m}"));
            }
            if let Some(d) = &e.dropout {
                args.push(format!("dropout_p={d}"));
            }
            let (scale, why) = match &e.scale {
                Some(s) if scale_looks_default(f, n, s) => {
                    (s.clone(), Msg::new(M::AttnRewriteDefault, &[&class, &s]))
                }
                Some(s) => (s.clone(), Msg::new(M::AttnRewrite, &[&class, &s])),
                None => (
                    "1.0".to_string(),
                    Msg::new(M::AttnRewriteUnscaled, &[&class]),
                ),
            };
            args.push(format!("scale={scale}"));
            let text = format!("{fname}.scaled_dot_product_attention({})", args.join(", "));
            let rel = f.rel.clone();
            // `(attn @ v).transpose(...)`: the call needs no parentheses.
            let target = match n.parent() {
                Some(par) if par.kind() == "parenthesized_expression" => par,
                _ => n,
            };
            cx.edit(
                &rel,
                target.start_byte(),
                target.end_byte(),
                text,
                Knob::Attention,
                Some(why),
            );
            for (s0, e0) in deletion_ranges(f, &e.stmts) {
                cx.edit(&rel, s0, e0, "", Knob::Attention, None);
            }
        }
    }
    // Hugging Face models: the loading call takes the attention implementation.
    for (fi, f) in p.py.iter().enumerate() {
        for n in f.all_nodes() {
            if n.kind() != "call" {
                continue;
            }
            let c = py::callee(f, n);
            if c.ends_with(".from_pretrained") && (c.contains("Model") || c.contains("For")) {
                found += 1;
                if py::kwarg(f, n, "attn_implementation").is_some() {
                    let why = Msg::new(M::AttnHf, &[]);
                    cx.set_kwarg(
                        fi,
                        n,
                        "attn_implementation",
                        "\"sdpa\"",
                        Knob::Attention,
                        why,
                    );
                } else {
                    cx.insert_kwarg(
                        fi,
                        n,
                        "attn_implementation=\"sdpa\"",
                        Knob::Attention,
                        Some(Msg::new(M::AttnHf, &[])),
                    );
                }
            }
        }
    }
    if found == 0 {
        cx.note(Knob::Attention, M::AttnNone, &[]);
    }
}

/// Is the scale `1/sqrt(d)` (`d ** -0.5`, `1 / math.sqrt(d)`), directly or through `self.scale = ...`?
fn scale_looks_default(f: &PyFile, at: Node, scale: &str) -> bool {
    let looks = |t: &str| {
        let t: String = t.split_whitespace().collect();
        t.contains("**-0.5") || t.contains("sqrt(") || t.contains("rsqrt")
    };
    if looks(scale) {
        return true;
    }
    let Some(attr) = scale.strip_prefix("self.") else {
        return false;
    };
    let Some(class) = py::ancestor(at, &["class_definition"]) else {
        return false;
    };
    let want = format!("self.{attr}");
    py::descendants(class).into_iter().any(|a| {
        a.kind() == "assignment"
            && a.child_by_field_name("left")
                .map(|l| f.text(l) == want)
                .unwrap_or(false)
            && a.child_by_field_name("right")
                .map(|r| looks(f.text(r)))
                .unwrap_or(false)
    })
}

/// Whole lines of the deleted statements, merged across blank lines; a blank line left
/// between two blank lines goes too.
fn deletion_ranges(f: &PyFile, stmts: &[Node]) -> Vec<(usize, usize)> {
    let mut r: Vec<(usize, usize)> = stmts
        .iter()
        .map(|s| (f.line_start(s.start_byte()), f.line_end_incl(s.end_byte())))
        .collect();
    r.sort();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in r {
        if let Some(last) = merged.last_mut() {
            if f.src[last.1..s.max(last.1)].trim().is_empty() {
                last.1 = last.1.max(e);
                continue;
            }
        }
        merged.push((s, e));
    }
    for m in merged.iter_mut() {
        let blank_before = m.0 >= 1 && {
            let prev = f.line_start(m.0 - 1);
            f.src[prev..m.0].trim().is_empty()
        };
        if blank_before && m.1 < f.src.len() {
            let next_end = f.line_end_incl(m.1);
            if f.src[m.1..next_end].trim().is_empty() {
                m.1 = next_end;
            }
        }
    }
    merged
}

/// `P @ V` or `torch.matmul(P, V)`.
fn matmul_operands<'t>(f: &PyFile, n: Node<'t>) -> Option<(Node<'t>, Node<'t>)> {
    match n.kind() {
        "binary_operator" => {
            let op = n.child_by_field_name("operator")?;
            if f.text(op) != "@" {
                return None;
            }
            Some((
                n.child_by_field_name("left")?,
                n.child_by_field_name("right")?,
            ))
        }
        "call" if py::last_name(&py::callee(f, n)) == "matmul" => {
            let a = py::positional(n);
            (a.len() == 2).then(|| (a[0], a[1]))
        }
        _ => None,
    }
}

fn is_minus_one(t: &str) -> bool {
    let t: String = t.split_whitespace().collect();
    t == "-1" || t == "dim=-1"
}

/// Follows an identifier to its assignment in the same block, before `before`.
fn follow<'t>(
    f: &PyFile,
    func: Node<'t>,
    name: Node<'t>,
    before: usize,
    e: &mut Eager<'t>,
) -> Option<(Node<'t>, usize)> {
    let n = f.text(name);
    let st = py::descendants_same_scope(func).into_iter().rfind(|s| {
        s.kind() == "expression_statement"
            && s.end_byte() <= before
            && s.named_child(0)
                .filter(|a| a.kind() == "assignment")
                .and_then(|a| a.child_by_field_name("left"))
                .map(|l| l.kind() == "identifier" && f.text(l) == n)
                .unwrap_or(false)
    })?;
    e.stmts.push(st);
    Some((
        st.named_child(0)?.child_by_field_name("right")?,
        st.start_byte(),
    ))
}

/// The probabilities operand: [dropout] of softmax(-1) of the scores.
fn parse_probs<'t>(
    f: &PyFile,
    func: Node<'t>,
    n: Node<'t>,
    before: usize,
    e: &mut Eager<'t>,
) -> Option<()> {
    let n = py::unparen(n);
    match n.kind() {
        "identifier" => {
            let (r, at) = follow(f, func, n, before, e)?;
            parse_probs(f, func, r, at, e)
        }
        "call" => {
            let c = py::callee(f, n);
            let pos = py::positional(n);
            let last = py::last_name(&c);
            // Dropout: self.attn_drop(x) or F.dropout(x, p, training)
            if !e.softmax && e.dropout.is_none() {
                if let Some(attr) = c.strip_prefix("self.") {
                    if !attr.contains('.') && pos.len() == 1 {
                        if !attr.contains("drop") {
                            return None;
                        }
                        e.dropout = Some(format!("self.{attr}.p if self.training else 0.0"));
                        return parse_probs(f, func, pos[0], before, e);
                    }
                }
                if last == "dropout" && !pos.is_empty() {
                    let pr = py::kwarg_value(f, n, "p")
                        .or(pos.get(1).copied())
                        .map(|x| f.text(x).to_string())
                        .unwrap_or("0.5".into());
                    let tr = py::kwarg_value(f, n, "training")
                        .or(pos.get(2).copied())
                        .map(|x| f.text(x).to_string());
                    e.dropout = Some(match tr {
                        Some(t) => format!("{pr} if {t} else 0.0"),
                        None => pr,
                    });
                    return parse_probs(f, func, pos[0], before, e);
                }
            }
            if last == "softmax" && !e.softmax {
                // x.softmax(dim=-1) / x.softmax(-1)
                let fun = n.child_by_field_name("function")?;
                let args_text = n
                    .child_by_field_name("arguments")
                    .map(|a| f.text(a).trim_matches(['(', ')']).to_string())?;
                let (x, rest) = if c == "softmax"
                    || c.ends_with("functional.softmax")
                    || c == "F.softmax"
                    || c == "torch.softmax"
                {
                    let x = *pos.first()?;
                    let rest = py::kwarg_value(f, n, "dim")
                        .or(pos.get(1).copied())
                        .map(|d| f.text(d).to_string())?;
                    (x, rest)
                } else {
                    let x = fun.child_by_field_name("object")?;
                    (x, args_text)
                };
                if !is_minus_one(&rest) {
                    return None;
                }
                e.softmax = true;
                return parse_scores(f, func, x, before, e);
            }
            None
        }
        _ => None,
    }
}

/// Scores: Q @ K^T, scaled (`* s`, `/ d`) and masked (`+ mask`, `.masked_fill(c, -inf)`).
fn parse_scores<'t>(
    f: &PyFile,
    func: Node<'t>,
    n: Node<'t>,
    before: usize,
    e: &mut Eager<'t>,
) -> Option<()> {
    let n = py::unparen(n);
    match n.kind() {
        "identifier" => {
            let (r, at) = follow(f, func, n, before, e)?;
            parse_scores(f, func, r, at, e)
        }
        "binary_operator" => {
            let op = f.text(n.child_by_field_name("operator")?);
            let l = n.child_by_field_name("left")?;
            let r = n.child_by_field_name("right")?;
            match op {
                "@" => qk(f, l, r, e),
                "+" if e.mask.is_none() => {
                    e.mask = Some(f.text(r).to_string());
                    parse_scores(f, func, l, before, e)
                }
                "*" if e.scale.is_none() => {
                    if parse_scores(f, func, l, before, e).is_some() {
                        e.scale = Some(f.text(r).to_string());
                        Some(())
                    } else {
                        e.scale = Some(f.text(l).to_string());
                        parse_scores(f, func, r, before, e)
                    }
                }
                "/" if e.scale.is_none() => {
                    let d = py::unparen(r);
                    let dt = f.text(d);
                    e.scale = Some(
                        if matches!(
                            d.kind(),
                            "identifier" | "attribute" | "call" | "integer" | "float"
                        ) {
                            format!("1.0 / {dt}")
                        } else {
                            format!("1.0 / ({dt})")
                        },
                    );
                    parse_scores(f, func, l, before, e)
                }
                _ => None,
            }
        }
        "call" => {
            let c = py::callee(f, n);
            if py::last_name(&c) == "matmul" {
                let a = py::positional(n);
                return (a.len() == 2)
                    .then_some(())
                    .and_then(|_| qk(f, a[0], a[1], e));
            }
            if py::last_name(&c) == "masked_fill" && e.mask.is_none() {
                let a = py::positional(n);
                let (cond, val) = (*a.first()?, f.text(*a.get(1)?));
                if !(val.contains("inf")
                    || val.trim_start().starts_with('-')
                    || val.contains("finfo"))
                {
                    return None;
                }
                e.mask = Some(format!("~({})", f.text(cond)));
                let obj = n
                    .child_by_field_name("function")?
                    .child_by_field_name("object")?;
                return parse_scores(f, func, obj, before, e);
            }
            None
        }
        _ => None,
    }
}

/// `Q @ K.transpose(-2, -1)`; a `q * s` on the left is a pre-scale.
fn qk(f: &PyFile, l: Node, r: Node, e: &mut Eager) -> Option<()> {
    let r = py::unparen(r);
    if r.kind() != "call" {
        return None;
    }
    let c = py::callee(f, r);
    if py::last_name(&c) != "transpose" {
        return None;
    }
    let a: Vec<String> = py::positional(r)
        .into_iter()
        .map(|x| f.text(x).split_whitespace().collect())
        .collect();
    if !(a == ["-2", "-1"] || a == ["-1", "-2"]) {
        return None;
    }
    let k = r
        .child_by_field_name("function")?
        .child_by_field_name("object")?;
    e.k = f.text(k).to_string();
    let l = py::unparen(l);
    if l.kind() == "binary_operator"
        && l.child_by_field_name("operator").map(|o| f.text(o)) == Some("*")
        && e.scale.is_none()
    {
        e.q = f.text(l.child_by_field_name("left")?).to_string();
        e.scale = Some(f.text(l.child_by_field_name("right")?).to_string());
    } else {
        e.q = f.text(l).to_string();
    }
    Some(())
}

/// Base class -> a project subclass of it that dispatches to xFormers when installed.
fn xformers_subclasses(p: &Project) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for f in &p.py {
        for n in f.all_nodes() {
            if n.kind() != "class_definition" {
                continue;
            }
            let t = f.text(n);
            if !(t.contains("XFORMERS")
                || t.contains("xformers")
                || t.contains("memory_efficient_attention"))
            {
                continue;
            }
            for s in py::superclasses(f, n) {
                out.entry(py::last_name(&s).to_string())
                    .or_insert_with(|| py::def_name(f, n).to_string());
            }
        }
    }
    out
}

/// The name of `torch.nn.functional` in file `fi` (adding `import torch.nn.functional as F`).
fn functional_name(cx: &mut Cx, fi: usize) -> String {
    let f = &cx.p.py[fi];
    if let Some(a) = py::import_alias(f, "torch.nn.functional", "") {
        return a;
    }
    if let Some(a) = py::import_alias(f, "torch.nn", "functional") {
        return a;
    }
    let taken = f
        .all_nodes()
        .into_iter()
        .any(|n| n.kind() == "identifier" && f.text(n) == "F");
    if taken {
        cx.ensure_import(fi, "import torch", Knob::Attention);
        return "torch.nn.functional".into();
    }
    cx.ensure_import(fi, "import torch.nn.functional as F", Knob::Attention);
    "F".into()
}
