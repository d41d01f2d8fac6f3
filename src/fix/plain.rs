//! Plain PyTorch loops: autocast around the forward pass and loss, a GradScaler for fp16,
//! gradient accumulation (loss divided by k, optimizer step every k micro-batches).
use tree_sitter::Node;

use super::edit::Cx;
use super::flow;
use super::py::{self, PyFile};
use super::trainers::{self, Setup};
use super::{Knob, Msg, M};
use crate::knobs::Precision;

pub fn apply_rules<'p>(cx: &mut Cx<'p>, s: &Setup<'p>) {
    let framework = !s.hf_args.is_empty()
        || !s.hf_trainers.is_empty()
        || !s.pl_trainers.is_empty()
        || !s.pl_cli.is_empty()
        || !s.accelerators.is_empty();
    if framework || s.backwards.is_empty() {
        return;
    }
    trainers::loader_and_optimizer(cx, s);
    // The loop: the first backward() directly in a `for` body.
    let Some(&(fi, bw)) = s
        .backwards
        .iter()
        .find(|(_, b)| {
            py::statement_of(*b)
                .and_then(|st| st.parent())
                .and_then(|bl| bl.parent())
                .map(|l| l.kind() == "for_statement")
                .unwrap_or(false)
        })
        .or(s.backwards.first())
    else {
        return;
    };
    loop_rules(cx, fi, bw);
}

fn reindent(text: &str, unit: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| {
            if l.trim().is_empty() {
                l.to_string()
            } else {
                format!("{unit}{l}")
            }
        })
        .collect()
}

fn is_step_like(f: &PyFile, st: Node, opt: &str) -> bool {
    let t = f.text(st);
    st.kind() != "comment"
        && (t.contains(&format!("{opt}.step("))
            || t.contains("zero_grad")
            || t.contains("clip_grad")
            || t.contains("sched")
            || t.contains("scaler."))
        && !matches!(
            st.kind(),
            "if_statement" | "for_statement" | "while_statement" | "with_statement"
        )
}

/// A statement of the forward pass: a plain statement that is not a data move, a step, a
/// zero_grad or logging; a statement calling the model always is.
fn is_forward_like(f: &PyFile, st: Node, model: Option<&str>) -> bool {
    if st.kind() == "comment" {
        return true;
    }
    if st.kind() != "expression_statement" {
        return false;
    }
    let t = f.text(st);
    if let Some(m) = model {
        if t.contains(&format!("{m}(")) && !t.contains("zero_grad") {
            return true;
        }
    }
    ![
        "zero_grad",
        ".to(",
        ".cuda(",
        "next(",
        ".step(",
        "print(",
        "log(",
    ]
    .iter()
    .any(|w| t.contains(w))
}

fn loop_rules(cx: &mut Cx, fi: usize, bw: Node) {
    let p = cx.p;
    let f = &p.py[fi];
    let at = format!("{}:{}", f.rel, f.line_of(bw.start_byte()));
    let Some(bstmt) = py::statement_of(bw) else {
        return;
    };
    let Some(block) = bstmt.parent() else { return };
    let Some(lp) = block.parent() else { return };
    let wants_prec = cx.t.precision.is_some();
    let k = cx.t.grad_accum;
    if lp.kind() != "for_statement" || bstmt.named_child(0) != Some(bw) {
        if wants_prec || k.is_some() {
            cx.note(Knob::Precision, M::LoopShape, &[&at]);
        }
        return;
    }
    let stmts = py::named_children(block);
    let Some(bi) = stmts.iter().position(|s| *s == bstmt) else {
        return;
    };
    // The loss: `loss` of `loss.backward()`, or of `scaler.scale(loss).backward()`.
    let loss = bw
        .child_by_field_name("function")
        .and_then(|x| x.child_by_field_name("object"))
        .map(|o| {
            let scaled = (o.kind() == "call" && py::callee(f, o).ends_with(".scale"))
                .then(|| py::positional(o))
                .and_then(|a| (a.len() == 1).then(|| a[0]));
            f.text(scaled.unwrap_or(o)).to_string()
        })
        .unwrap_or_default();
    // The optimizer: `X.step()` or `scaler.step(X)` after backward.
    let opt = stmts[bi + 1..]
        .iter()
        .chain(py::descendants(block).iter())
        .find_map(|st| {
            py::descendants(*st)
                .into_iter()
                .chain(std::iter::once(*st))
                .find_map(|n| step_target(f, n))
        });
    // Accumulation as an inner loop (`for micro_step in range(N): ... backward()`, the step after
    // that loop): the optimizer is found after the inner loop, and N is the accumulation.
    let inner = if opt.is_none() {
        inner_accumulation(f, lp)
    } else {
        None
    };
    let opt = opt.or_else(|| inner.as_ref().map(|(_, o)| o.clone()));
    let Some(opt) = opt else {
        if wants_prec || k.is_some() {
            cx.note(Knob::Precision, M::LoopShape, &[&at]);
        }
        return;
    };
    let unit = f.indent_unit();
    let ind = f.indent_at(bstmt.start_byte()).to_string();
    let rel = f.rel.clone();

    // Forward range: the statements computing the loss, back to the first data move / zero_grad.
    // It ends at the assignment that defines the loss, not at one that rescales it
    // (`loss = loss / grad_accum_steps`, which fix itself writes).
    let i_loss = (0..bi).rev().find(|&i| {
        let st = stmts[i];
        let Some(a) = st
            .named_child(0)
            .filter(|a| st.kind() == "expression_statement" && a.kind() == "assignment")
        else {
            return false;
        };
        let defines = a
            .child_by_field_name("left")
            .is_some_and(|l| py::bound_names(f, l).contains(&loss.as_str()));
        let rescales = a.child_by_field_name("right").is_some_and(|r| {
            py::descendants(r)
                .into_iter()
                .chain(std::iter::once(r))
                .any(|n| n.kind() == "identifier" && f.text(n) == loss)
        });
        defines && !rescales
    });
    let existing_autocast = py::ancestor(bw, &["with_statement"])
        .and_then(|w| autocast_call(f, w))
        .or_else(|| {
            stmts[..bi]
                .iter()
                .rev()
                .filter(|s| s.kind() == "with_statement")
                .find_map(|w| autocast_call(f, *w))
        });

    // The model: `X` of `X.parameters()` given to the optimizer.
    let params: Vec<(String, String)> = py::descendants(f.tree.root_node())
        .into_iter()
        .filter(|n| n.kind() == "call" && py::callee(f, *n).ends_with(".parameters"))
        .filter_map(|n| {
            let obj = py::callee(f, n).strip_suffix(".parameters")?.to_string();
            let st: String = f.text(py::statement_of(n)?).split_whitespace().collect();
            Some((obj, st))
        })
        .collect();
    let model: Option<String> = params
        .iter()
        .find(|(_, st)| st.starts_with(&format!("{opt}=")))
        .or_else(|| params.iter().find(|(_, st)| st.contains("optim")))
        .map(|(obj, _)| obj.clone());

    // Device type for autocast / GradScaler.
    let func = py::ancestor(lp, &["function_definition"]);
    let device = device_expr(f, func);

    let mut prec = cx.t.precision;
    if matches!(prec, Some(Precision::Bf16True | Precision::Fp16True)) {
        cx.note(
            Knob::Precision,
            M::LoopTruePrecision,
            &[&prec.map(|x| x.name()).unwrap_or("")],
        );
        prec = None;
    }
    if prec == Some(Precision::Tf32) {
        let at = py::import_insert_point(f);
        cx.edit(&rel, at, at, "\ntorch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls\ntorch.backends.cudnn.allow_tf32 = True\n", Knob::Precision, Some(Msg::new(M::LoopTf32, &[])));
        prec = None;
    }
    let dtype = match prec {
        Some(Precision::Bf16Mixed) => Some("torch.bfloat16"),
        Some(Precision::Fp16Mixed) => Some("torch.float16"),
        _ => None,
    };
    if prec == Some(Precision::Fp32) && existing_autocast.is_some() {
        cx.note(Knob::Precision, M::LoopFp32Autocast, &[&at]);
    }
    let has_scaler = f.src.contains("GradScaler(");
    let scaler = prec == Some(Precision::Fp16Mixed) && !has_scaler;
    if prec == Some(Precision::Fp16Mixed) && has_scaler {
        // fp16 needs the scaler on: one switched by a setting may be off.
        for n in f.all_nodes() {
            if n.kind() == "call" && py::callee(f, n).ends_with("GradScaler") {
                note_switch(cx, f, n, M::LoopScalerSwitch);
            }
        }
    }

    if let Some(dtype) = dtype {
        match existing_autocast {
            Some(call) => {
                let why = Msg::new(M::LoopAutocastDtype, &[&dtype]);
                cx.set_kwarg(fi, call, "dtype", dtype, Knob::Precision, why);
                // An autocast switched by a setting (`enabled=args.amp`) may be off.
                note_switch(cx, f, call, M::LoopAutocastSwitch);
            }
            None => {
                match i_loss {
                    Some(il) => {
                        let mut i0 = il;
                        while i0 > 0 && is_forward_like(f, stmts[i0 - 1], model.as_deref()) {
                            i0 -= 1;
                        }
                        while i0 < il && stmts[i0].kind() == "comment" {
                            i0 += 1;
                        }
                        let s0 = f.line_start(stmts[i0].start_byte());
                        let e0 = f.line_end_incl(stmts[il].end_byte());
                        let body = reindent(&f.src[s0..e0], &unit);
                        let text = format!("{ind}with torch.autocast(device_type={device}, dtype={dtype}):\n{body}");
                        let why = Msg::new(M::LoopAutocast, &[&dtype, &loss]);
                        cx.edit(&rel, s0, e0, text, Knob::Precision, Some(why));
                    }
                    None => cx.note(Knob::Precision, M::LoopShape, &[&at]),
                }
            }
        }
    }

    if let Some((n, _)) = inner {
        let site = flow::resolve(p, fi, n);
        cx.eff.old_accum = Some(site.as_ref().and_then(|s| s.int()).unwrap_or(1));
        if let Some(k) = k {
            match site {
                Some(site) => cx.set_site(
                    &site,
                    &k.to_string(),
                    Knob::GradAccum,
                    Msg::new(M::LoopAccumInner, &[]),
                ),
                None => cx.note(Knob::GradAccum, M::LoopShape, &[&at]),
            }
        }
        if scaler {
            cx.note(Knob::Precision, M::LoopScalerManual, &[&at]);
        }
        return;
    }
    // Existing accumulation: `if (i + 1) % N == 0: optimizer.step()`.
    let step_in_if = stmts[bi + 1..]
        .iter()
        .find(|s| s.kind() == "if_statement" && steps(f, **s, &opt));
    let mut old_accum = 1;
    if let Some(ifs) = step_in_if {
        if let Some(cond) = ifs.child_by_field_name("condition") {
            if let Some(site) = py::modulo_divisor(f, cond).and_then(|r| flow::resolve(p, fi, r)) {
                old_accum = site.int().unwrap_or(1);
                if let Some(k) = k {
                    cx.set_site(
                        &site,
                        &k.to_string(),
                        Knob::GradAccum,
                        Msg::new(M::LoopAccumExisting, &[]),
                    );
                }
            }
        }
        if scaler {
            cx.note(Knob::Precision, M::LoopScalerManual, &[&at]);
        }
        if k.is_some() && old_accum == 1 {
            cx.note(Knob::GradAccum, M::LoopShape, &[&at]);
        }
        cx.eff.old_accum = Some(old_accum);
        if scaler {
            insert_scaler(cx, f, lp, &device);
            let t = format!("{}.scale({loss}).backward()", "scaler");
            cx.edit(
                &rel,
                bw.start_byte(),
                bw.end_byte(),
                t,
                Knob::Precision,
                Some(Msg::new(M::LoopScaleBackward, &[])),
            );
        }
        return;
    }
    cx.eff.old_accum = Some(1);
    let accum = k.filter(|&k| k > 1);

    if !scaler && accum.is_none() {
        return;
    }
    // The step run: the statement after backward that calls `opt.step()` and the clipping,
    // zero_grad and scheduler statements next to it. Other statements between backward and
    // the step (logging, running sums) stay ungated. Without such a statement neither the loss
    // division nor the scaler can be written: half of either would train wrongly.
    let Some(si) = (bi + 1..stmts.len())
        .find(|&i| is_step_like(f, stmts[i], &opt) && steps(f, stmts[i], &opt))
    else {
        let knob = if accum.is_some() {
            Knob::GradAccum
        } else {
            Knob::Precision
        };
        cx.note(knob, M::LoopShape, &[&at]);
        return;
    };
    let mut r0 = si;
    while r0 > bi + 1 && is_step_like(f, stmts[r0 - 1], &opt) {
        r0 -= 1;
    }
    let mut ri = si + 1;
    while ri < stmts.len() && is_step_like(f, stmts[ri], &opt) {
        ri += 1;
    }
    let run = &stmts[r0..ri];
    if scaler {
        insert_scaler(cx, f, lp, &device);
    }
    let zero_before: Vec<Node> = stmts[..bi]
        .iter()
        .copied()
        .filter(|s| s.kind() == "expression_statement" && f.text(*s).contains("zero_grad"))
        .collect();
    let idx = accum.map(|_| accum_index(cx, f, lp));

    // The backward line (and the loss division before it).
    let mut bw_text = String::new();
    if accum.is_some() {
        bw_text.push_str(&format!("{loss} = {loss} / grad_accum_steps  # average over the accumulated micro-batches\n{ind}"));
    }
    if scaler {
        bw_text.push_str(&format!("scaler.scale({loss}).backward()"));
    } else {
        bw_text.push_str(f.text(bw));
    }
    let bs = bw.start_byte();
    let why = if accum.is_some() {
        Msg::new(M::LoopAccumDiv, &[])
    } else {
        Msg::new(M::LoopScaleBackward, &[])
    };
    cx.edit(
        &rel,
        bs,
        bw.end_byte(),
        bw_text,
        if accum.is_some() {
            Knob::GradAccum
        } else {
            Knob::Precision
        },
        Some(why),
    );

    // The step run, transformed.
    let s0 = f.line_start(run[0].start_byte());
    let e0 = f.line_end_incl(run[run.len() - 1].end_byte());
    let mut lines = String::new();
    let mut has_zero = false;
    for st in run {
        let t = f.text(*st);
        let line_start = f.line_start(st.start_byte());
        let line_end = f.line_end_incl(st.end_byte());
        let mut whole = f.src[line_start..line_end].to_string();
        if t.contains("zero_grad") {
            has_zero = true;
        }
        if scaler {
            let plain_step = format!("{opt}.step()");
            if t == plain_step {
                whole = whole.replacen(
                    &plain_step,
                    &format!("scaler.step({opt})\n{ind}scaler.update()"),
                    1,
                );
            } else if t.contains("clip_grad") {
                whole = format!("{ind}scaler.unscale_({opt})  # clip the true gradients\n{whole}");
            }
        }
        lines.push_str(&whole);
    }
    if let (Some(_), Some(idx)) = (accum, idx.as_ref()) {
        let mut body = lines.clone();
        if !has_zero {
            for z in &zero_before {
                let zl = &f.src[f.line_start(z.start_byte())..f.line_end_incl(z.end_byte())];
                let zl = zl.trim_start();
                body.push_str(&format!("{ind}{zl}"));
            }
        }
        let body = reindent(&body, &unit);
        let text = format!("{ind}if ({idx} + 1) % grad_accum_steps == 0:\n{body}");
        let why = Msg::new(M::LoopAccumStep, &[&opt]);
        cx.edit(&rel, s0, e0, text, Knob::GradAccum, Some(why));
        if !has_zero {
            for z in &zero_before {
                let zs = f.line_start(z.start_byte());
                let ze = f.line_end_incl(z.end_byte());
                cx.edit(
                    &rel,
                    zs,
                    ze,
                    "",
                    Knob::GradAccum,
                    Some(Msg::new(M::LoopZeroGradMoved, &[])),
                );
            }
        }
        cx.note(Knob::GradAccum, M::LoopAccumNote, &[&loss]);
    } else if lines != f.src[s0..e0] {
        cx.edit(
            &rel,
            s0,
            e0,
            lines,
            Knob::Precision,
            Some(Msg::new(M::LoopScalerStep, &[&opt])),
        );
    }
}

/// Notes `id` (at the call, with the expression) when `call` is switched on by a setting
/// (`enabled=args.amp`) rather than `enabled=True` or no `enabled=` at all.
fn note_switch(cx: &mut Cx, f: &PyFile, call: Node, id: M) {
    if let Some(v) = py::kwarg_value(f, call, "enabled").filter(|v| f.text(*v) != "True") {
        let at = format!("{}:{}", f.rel, f.line_of(call.start_byte()));
        cx.note(Knob::Precision, id, &[&at, &f.text(v)]);
    }
}

/// `for micro_step in range(N):` whose block is followed, in the enclosing block, by a statement
/// calling `X.step()` (X not a scheduler or scaler) or `scaler.step(X)`: N and X.
fn inner_accumulation<'t>(f: &PyFile, lp: Node<'t>) -> Option<(Node<'t>, String)> {
    let right = lp.child_by_field_name("right")?;
    if right.kind() != "call" || py::callee(f, right) != "range" {
        return None;
    }
    let args = py::positional(right);
    let [n] = args.as_slice() else { return None };
    let outer = lp.parent()?;
    let after = py::named_children(outer)
        .into_iter()
        .skip_while(|s| *s != lp)
        .skip(1);
    for st in after {
        let opt = py::descendants(st)
            .into_iter()
            .chain(std::iter::once(st))
            .find_map(|c| step_target(f, c));
        if let Some(opt) = opt {
            return Some((*n, opt));
        }
    }
    None
}

/// The optimizer a call steps: X of `X.step()` (X not a scheduler or scaler) or of
/// `scaler.step(X)`.
fn step_target(f: &PyFile, c: Node) -> Option<String> {
    if c.kind() != "call" {
        return None;
    }
    let callee = py::callee(f, c);
    let (obj, m) = callee.rsplit_once('.')?;
    if m != "step" {
        return None;
    }
    match py::positional(c).as_slice() {
        [o] if obj.contains("scaler") => Some(f.text(*o).to_string()),
        [] if !obj.contains("sched") && !obj.contains("scaler") => Some(obj.to_string()),
        _ => None,
    }
}

/// Whether statement `st` steps optimizer `opt`.
fn steps(f: &PyFile, st: Node, opt: &str) -> bool {
    py::descendants(st)
        .into_iter()
        .chain(std::iter::once(st))
        .any(|c| step_target(f, c).as_deref() == Some(opt))
}

/// The `autocast(...)` call a `with` statement enters: in the statement itself, or assigned to
/// the name it enters (`ctx = nullcontext() if cpu else torch.autocast(...)`; `with ctx:`).
fn autocast_call<'t>(f: &'t PyFile, with: Node<'t>) -> Option<Node<'t>> {
    let is_autocast = |n: &Node| n.kind() == "call" && py::callee(f, *n).contains("autocast");
    let nodes = py::descendants(with);
    // In the statement's header, not in its body.
    let scope = py::ancestor(with, &["block"]);
    if let Some(inline) = nodes
        .iter()
        .find(|n| is_autocast(n) && py::ancestor(**n, &["block"]) == scope)
    {
        return Some(*inline);
    }
    let items: Vec<&Node> = nodes.iter().filter(|n| n.kind() == "with_item").collect();
    let [item] = items.as_slice() else {
        return None;
    };
    let name = f.text(item.named_child(0)?);
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    {
        return None;
    }
    f.all_nodes().into_iter().find_map(|a| {
        if a.kind() != "assignment"
            || a.child_by_field_name("left").map(|l| f.text(l)) != Some(name)
        {
            return None;
        }
        let r = a.child_by_field_name("right")?;
        py::descendants(r).into_iter().find(is_autocast)
    })
}

/// `device.type` when the function has a `device` variable, else `"cuda"`.
fn device_expr(f: &PyFile, func: Option<Node>) -> String {
    let scope = func.unwrap_or(f.tree.root_node());
    let rhs = py::descendants_same_scope(scope)
        .into_iter()
        .chain(py::descendants_same_scope(f.tree.root_node()))
        .filter(|a| a.kind() == "assignment")
        .find(|a| {
            a.child_by_field_name("left")
                .map(|l| f.text(l) == "device")
                .unwrap_or(false)
        })
        .and_then(|a| a.child_by_field_name("right"));
    match rhs {
        Some(r) if r.kind() == "call" && py::callee(f, r).ends_with("device") => {
            "device.type".into()
        }
        Some(r) if r.kind() == "string" => "device".into(),
        _ => "\"cuda\"".into(),
    }
}

/// The outermost `for` around the training loop inside its function.
fn outer_loop(lp: Node) -> Node {
    let mut out = lp;
    let mut cur = lp;
    while let Some(a) = py::ancestor(
        cur,
        &["for_statement", "while_statement", "function_definition"],
    ) {
        if a.kind() == "function_definition" {
            break;
        }
        out = a;
        cur = a;
    }
    out
}

fn insert_scaler(cx: &mut Cx, f: &PyFile, lp: Node, device: &str) {
    let outer = outer_loop(lp);
    let at = f.line_start(outer.start_byte());
    let ind = f.indent_at(outer.start_byte()).to_string();
    let rel = f.rel.clone();
    cx.edit(
        &rel,
        at,
        at,
        format!("{ind}scaler = torch.amp.GradScaler({device})  # fp16 needs loss scaling\n"),
        Knob::Precision,
        Some(Msg::new(M::LoopScaler, &[])),
    );
}

/// The micro-batch index of the loop, adding `enumerate` (and `grad_accum_steps = k`) as needed.
fn accum_index(cx: &mut Cx, f: &PyFile, lp: Node) -> String {
    let k = cx.t.grad_accum.unwrap_or(1);
    let rel = f.rel.clone();
    let outer = outer_loop(lp);
    let at = f.line_start(outer.start_byte());
    let ind = f.indent_at(outer.start_byte()).to_string();
    cx.edit(
        &rel,
        at,
        at,
        format!("{ind}grad_accum_steps = {k}\n"),
        Knob::GradAccum,
        Some(Msg::new(M::LoopAccumConst, &[&k])),
    );
    let (Some(left), Some(right)) = (
        lp.child_by_field_name("left"),
        lp.child_by_field_name("right"),
    ) else {
        return "micro_step".into();
    };
    if right.kind() == "call" && py::callee(f, right) == "enumerate" {
        if let Some(first) = py::named_children(left).first() {
            if matches!(left.kind(), "pattern_list" | "tuple_pattern")
                && first.kind() == "identifier"
            {
                return f.text(*first).to_string();
            }
        }
    }
    let func_text = py::ancestor(lp, &["function_definition"])
        .map(|x| f.text(x))
        .unwrap_or(&f.src);
    let idx = if func_text.contains("micro_step") {
        "accum_step"
    } else {
        "micro_step"
    };
    let l = f.text(left);
    let new_left = if left.kind() == "pattern_list" {
        format!("{idx}, ({l})")
    } else {
        format!("{idx}, {l}")
    };
    cx.edit(
        &rel,
        left.start_byte(),
        left.end_byte(),
        new_left,
        Knob::GradAccum,
        Some(Msg::new(M::LoopEnumerate, &[&idx])),
    );
    cx.edit(
        &rel,
        right.start_byte(),
        right.end_byte(),
        format!("enumerate({})", f.text(right)),
        Knob::GradAccum,
        None,
    );
    idx.to_string()
}
