//! Walks one training step over a trace: forward, then backward op by op in reverse, and records
//! the memory at every op as (per-sample bytes, absolute bytes) so that any batch size can be
//! evaluated without walking again.
use std::collections::HashSet;

use serde::Serialize;

use super::Phase;
use crate::model::graph::Trace;

/// Memory at one point of the step.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Point {
    pub phase: Phase,
    /// Saved tensors alive, bytes per sample.
    pub saved: f64,
    /// Temporaries alive (activation gradients, recomputation, outputs not saved), bytes per sample.
    pub transient: f64,
    /// The activation-gradient part of `transient`, bytes per sample.
    pub act_grads: f64,
    /// autocast weight casts alive, bytes (not per sample).
    pub casts: f64,
    /// Parameter-gradient elements alive.
    pub pgrad: f64,
    /// A reduction over rows in flight at this point: (columns, rows per sample); its staging
    /// buffer (`reduction::row_sum_buffer`) is not linear in the batch.
    pub row_sum: Option<(u64, f64)>,
}

/// The walk's result for one (precision, attention, checkpointing).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Profile {
    /// Points on the upper hull: the only candidates for the peak at any batch size.
    pub points: Vec<Point>,
    /// Trainable parameter elements (one gradient each).
    pub pgrad_total: f64,
    /// autocast weight cache at the end of forward, bytes.
    pub casts_total: f64,
    /// Saved tensors at the end of forward, bytes per sample.
    pub saved_end: f64,
    /// Largest single tensor, bytes per sample.
    pub largest_alloc: f64,
    /// Bytes per sample allocated and freed again during the step (temporaries).
    pub churn: f64,
    /// Sizes (bytes per sample) of the tensors kept at the end of forward, with their counts:
    /// the live set around the peak, for the allocator's rounding (`reserved.rs`).
    pub saved_sizes: Vec<(f64, u32)>,
    /// Largest convolution backward workspace, bytes per sample (see `reserved.rs`).
    pub conv_workspace_max: f64,
    /// The step's allocations and frees in order, for the caching-allocator replay.
    #[serde(skip)]
    pub events: Vec<Ev>,
    /// Number of event slots (ids) used by `events`.
    pub slots: usize,
}

/// An event of `Profile::events` at one batch size: bytes are known, a free carries the size of
/// what it frees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizedEv {
    /// `param_grad`: a parameter's gradient (sized by the model, not the batch).
    Alloc {
        slot: u32,
        bytes: u64,
        param_grad: bool,
    },
    Free {
        slot: u32,
        bytes: u64,
    },
    EndForward,
}

impl Profile {
    /// The events at `batch`, reduction buffers sized for `device` (for tools that compare the
    /// walk's stream with a real one).
    pub fn sized_events(&self, batch: f64, device: super::reduction::Device) -> Vec<SizedEv> {
        let mut size = vec![0u64; self.slots];
        self.events
            .iter()
            .map(|e| {
                let (slot, bytes, param_grad) = match *e {
                    Ev::Alloc {
                        slot,
                        per_sample,
                        abs,
                    } => (slot, (per_sample * batch + abs).max(1.0) as u64, false),
                    Ev::ParamGrad { slot, abs } => (slot, abs as u64, true),
                    Ev::RowSum {
                        slot,
                        cols,
                        rows_per_sample,
                    } => (
                        slot,
                        super::reduction::row_sum_at(cols, rows_per_sample, batch, device),
                        false,
                    ),
                    Ev::Free { slot } => {
                        return SizedEv::Free {
                            slot,
                            bytes: size[slot as usize],
                        }
                    }
                    Ev::EndForward => return SizedEv::EndForward,
                };
                size[slot as usize] = bytes;
                SizedEv::Alloc {
                    slot,
                    bytes,
                    param_grad,
                }
            })
            .collect()
    }
}

/// What an event slot of `Profile::events` stands for, for a trace of `nt` tensors and `nops` ops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slot {
    /// A tensor's storage (its index).
    Tensor(usize),
    /// The gradient of a tensor (its index).
    Grad(usize),
    /// The autocast weight casts of an op (its index).
    Cast(usize),
    /// The parameter gradient an op's backward makes (its index).
    ParamGrad(usize),
    /// An op's kernel workspace or reduction buffer (its index).
    Workspace(usize),
}

impl Slot {
    pub fn id(self, nt: usize, nops: usize) -> u32 {
        (match self {
            Slot::Tensor(j) => j,
            Slot::Grad(j) => nt + j,
            Slot::Cast(i) => 2 * nt + i,
            Slot::ParamGrad(i) => 2 * nt + nops + i,
            Slot::Workspace(i) => 2 * nt + 2 * nops + i,
        }) as u32
    }

    pub fn of(id: u32, nt: usize, nops: usize) -> Slot {
        let id = id as usize;
        if id < nt {
            Slot::Tensor(id)
        } else if id < 2 * nt {
            Slot::Grad(id - nt)
        } else if id < 2 * nt + nops {
            Slot::Cast(id - 2 * nt)
        } else if id < 2 * nt + 2 * nops {
            Slot::ParamGrad(id - 2 * nt - nops)
        } else {
            Slot::Workspace(id - 2 * nt - 2 * nops)
        }
    }
}

/// One allocation event of a forward + backward pass. Sizes are `per_sample * batch + abs`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ev {
    Alloc {
        slot: u32,
        per_sample: f64,
        abs: f64,
    },
    Free {
        slot: u32,
    },
    /// End of forward (autocast exits, the model output is dropped).
    EndForward,
    /// A parameter gradient (kept until `zero_grad`).
    ParamGrad {
        slot: u32,
        abs: f64,
    },
    /// The staging buffer of a reduction over `rows_per_sample * batch` rows of `cols` columns
    /// (`reduction::row_sum_buffer`; nothing when the kernel needs none), freed by a `Free`.
    RowSum {
        slot: u32,
        cols: u64,
        rows_per_sample: f64,
    },
}

/// Tensors grouped by op, in the order given: one allocation for the whole walk where a list per
/// op took thousands.
struct ByOp {
    start: Vec<usize>,
    items: Vec<usize>,
}

impl ByOp {
    /// From (op, tensor) pairs; ops below `nops`.
    fn new(pairs: Vec<(usize, usize)>, nops: usize) -> ByOp {
        let mut start = vec![0usize; nops + 1];
        for &(op, _) in &pairs {
            start[op + 1] += 1;
        }
        for i in 0..nops {
            start[i + 1] += start[i];
        }
        let mut next = start.clone();
        let mut items = vec![0usize; pairs.len()];
        for (op, j) in pairs {
            items[next[op]] = j;
            next[op] += 1;
        }
        ByOp { start, items }
    }

    fn of(&self, op: usize) -> &[usize] {
        &self.items[self.start[op]..self.start[op + 1]]
    }
}

pub fn simulate(t: &Trace, ck: &[bool]) -> Profile {
    let nt = t.tensors.len();
    let nops = t.ops.len();
    let counted = |i: usize| t.tensors[i].base.is_none() && t.tensors[i].producer != usize::MAX;
    let bytes = |i: usize| t.tensors[i].bytes();

    // which tensors stay for backward, and after which op's backward they go
    let mut retained = vec![false; nt];
    let mut release = vec![usize::MAX; nt];
    for (i, ti) in t.tensors.iter().enumerate() {
        if !counted(i) {
            continue;
        }
        for &s in &ti.savers {
            if !ck[t.ops[s].stage] {
                retained[i] = true;
                release[i] = release[i].min(s);
            }
        }
    }
    // stage segments (contiguous op ranges of one stage instance)
    let mut segs: Vec<(usize, usize, usize)> = Vec::new(); // (stage, start, end)
    for (i, op) in t.ops.iter().enumerate() {
        match segs.last_mut() {
            Some(s) if s.0 == op.stage && s.2 == i => s.2 = i + 1,
            _ => segs.push((op.stage, i, i + 1)),
        }
    }
    // inputs of checkpointed segments are kept by `checkpoint` until that segment's backward
    for &(st, a, b) in &segs {
        if !ck[st] {
            continue;
        }
        for i in a..b {
            for inp in &t.ops[i].inputs {
                let r = t.root(*inp).0;
                let p = t.tensors[r].producer;
                if counted(r) && (p < a || p >= b) {
                    retained[r] = true;
                    release[r] = release[r].min(a);
                }
            }
        }
    }

    // ---------------------------------------------------------------- forward
    let mut frees: Vec<(usize, usize)> = Vec::new(); // (op, tensor)
    let mut pinned: Vec<usize> = Vec::new();
    for (i, &kept) in retained.iter().enumerate() {
        if !counted(i) || kept {
            continue;
        }
        if t.tensors[i].pinned {
            pinned.push(i);
        } else {
            let lu = t.tensors[i].last_use.max(t.tensors[i].producer);
            frees.push((lu.min(nops - 1), i));
        }
    }
    let frees = ByOp::new(frees, nops);
    let mut pts: Vec<Point> = Vec::with_capacity(2 * nops);
    let mut live = 0.0;
    let mut live_saved = 0.0;
    let mut casts = 0.0;
    let mut largest = 0.0f64;
    let mut churn = 0.0;
    let mut ev: Vec<Ev> = Vec::with_capacity(4 * nt);
    let s_grad = |j: usize| Slot::Grad(j).id(nt, nops);
    let s_cast = |i: usize| Slot::Cast(i).id(nt, nops);
    let s_pgrad = |i: usize| Slot::ParamGrad(i).id(nt, nops);
    let s_extra = |i: usize| Slot::Workspace(i).id(nt, nops);
    let pbytes = t.mode.param_dt().bytes();
    for (i, op) in t.ops.iter().enumerate() {
        for o in &op.outputs {
            if counted(o.0) && t.tensors[o.0].producer == i {
                ev.push(Ev::Alloc {
                    slot: o.0 as u32,
                    per_sample: bytes(o.0),
                    abs: 0.0,
                });
                live += bytes(o.0);
                largest = largest.max(bytes(o.0));
                if retained[o.0] {
                    live_saved += bytes(o.0);
                } else {
                    churn += bytes(o.0);
                }
            }
        }
        casts += op.weight_cast_bytes;
        if op.weight_cast_bytes > 0.0 {
            ev.push(Ev::Alloc {
                slot: s_cast(i),
                per_sample: 0.0,
                abs: op.weight_cast_bytes,
            });
        }
        if op.fwd_extra > 0.0 {
            ev.push(Ev::Alloc {
                slot: s_extra(i),
                per_sample: op.fwd_extra,
                abs: 0.0,
            });
            ev.push(Ev::Free { slot: s_extra(i) });
        }
        push_point(
            &mut pts,
            Point {
                phase: Phase::Forward,
                saved: live_saved,
                transient: live - live_saved + op.fwd_extra,
                act_grads: 0.0,
                casts,
                pgrad: 0.0,
                row_sum: None,
            },
        );
        for &j in frees.of(i) {
            live -= bytes(j);
            ev.push(Ev::Free { slot: j as u32 });
        }
    }
    for &j in &pinned {
        ev.push(Ev::Free { slot: j as u32 });
    }
    for (i, op) in t.ops.iter().enumerate() {
        if ck[op.stage] && op.weight_cast_bytes > 0.0 {
            ev.push(Ev::Free { slot: s_cast(i) });
        }
    }
    ev.push(Ev::EndForward);
    let saved_end = live_saved;
    let mut sizes: Vec<(f64, u32)> = Vec::new();
    for (i, &kept) in retained.iter().enumerate() {
        if kept {
            let b = bytes(i);
            match sizes.iter_mut().find(|(s, _)| (*s - b).abs() < 0.5) {
                Some(e) => e.1 += 1,
                None => sizes.push((b, 1)),
            }
        }
    }
    let casts_total = casts;

    // ---------------------------------------------------------------- backward
    let mut alive = retained.clone();
    let mut grad = vec![false; nt];
    let mut grad_done = vec![false; nt];
    let mut live_grad = 0.0;
    let mut pgrad = 0.0;
    let mut keys: HashSet<u32> = HashSet::new();
    // casts of checkpointed ops were only in autocast's cache: gone at the end of forward
    let mut casts_alive: f64 = t
        .ops
        .iter()
        .filter(|o| !ck[o.stage])
        .map(|o| o.weight_cast_bytes)
        .sum();
    let mut recomputed_casts = vec![false; nops];
    // saved tensors go after the backward of `release`; those a recomputation saves again,
    // after their first saver's in the segment (`rel_seg`: (op, tensor) in the order made)
    let rel_at = ByOp::new(
        (0..nt)
            .filter(|&j| retained[j] && release[j] < nops)
            .map(|j| (release[j], j))
            .collect(),
        nops,
    );
    let mut rel_seg: Vec<(usize, usize)> = Vec::new();
    let saves = |i: usize, x: &crate::model::graph::T| t.tensors[t.root(*x).0].savers.contains(&i);
    for &(st, a, b) in segs.iter().rev() {
        // in a checkpointed segment, the op at whose backward the recomputation starts: the
        // last op that saves a tensor (the first unpack); the ops after it need nothing
        // recomputed, so their backward runs first
        let recompute_at = ck[st].then(|| {
            (a..b)
                .rev()
                .find(|&i| {
                    let op = &t.ops[i];
                    op.inputs.iter().chain(&op.outputs).any(|x| saves(i, x))
                })
                .unwrap_or(b - 1)
        });
        let mut rel_again = ByOp::new(Vec::new(), b - a);
        for i in (a..b).rev() {
            if let Some(last) = recompute_at.filter(|&l| l == i) {
                // non-reentrant checkpoint: the segment's forward runs again, keeping what its
                // backward needs
                let mut local = 0.0f64;
                let mut peak_local = 0.0f64;
                let mut kept = 0.0;
                let mut seg_casts = 0.0;
                let mut rec_alive: Vec<usize> = Vec::new();
                // early stop (`torch.utils.checkpoint`'s default): recomputation ends inside the
                // last op that saves a tensor, when that save is packed; that op's output is made
                // only when the op saves its own output (softmax, dropout's mask)
                let keeps_output = t.ops[last].outputs.iter().any(|x| saves(last, x));
                for k in a..=last {
                    for o in &t.ops[k].outputs {
                        if k == last && !keeps_output {
                            break;
                        }
                        let j = o.0;
                        if !counted(j) || t.tensors[j].producer != k {
                            continue;
                        }
                        local += bytes(j);
                        ev.push(Ev::Alloc {
                            slot: j as u32,
                            per_sample: bytes(j),
                            abs: 0.0,
                        });
                        // what the segment's backward saves stays until its first saver's backward;
                        // the rest are temporaries
                        let first_saver = t.tensors[j]
                            .savers
                            .iter()
                            .copied()
                            .filter(|&s| s >= a && s < b)
                            .min();
                        match first_saver {
                            Some(r) if !alive[j] => {
                                alive[j] = true;
                                kept += bytes(j);
                                rel_seg.push((r, j));
                            }
                            Some(_) => {}
                            None => rec_alive.push(j),
                        }
                    }
                    if t.ops[k].weight_cast_bytes > 0.0 {
                        ev.push(Ev::Alloc {
                            slot: s_cast(k),
                            per_sample: 0.0,
                            abs: t.ops[k].weight_cast_bytes,
                        });
                    }
                    seg_casts += t.ops[k].weight_cast_bytes;
                    peak_local = peak_local.max(local);
                    // temporaries of the recomputation die at their last use inside the segment
                    // (which need not be an op reading them: a held argument, an autocast source)
                    let mut dead = 0.0;
                    rec_alive.retain(|&r| {
                        let dies = t.tensors[r].last_use <= k;
                        if dies {
                            dead += bytes(r);
                            ev.push(Ev::Free { slot: r as u32 });
                        }
                        !dies
                    });
                    local -= dead;
                }
                for &j in &rec_alive {
                    ev.push(Ev::Free { slot: j as u32 });
                }
                recomputed_casts[a..=last]
                    .iter_mut()
                    .for_each(|r| *r = true);
                push_point(
                    &mut pts,
                    Point {
                        phase: Phase::Backward,
                        saved: live_saved,
                        transient: live_grad + peak_local,
                        act_grads: live_grad,
                        casts: casts_alive + seg_casts,
                        pgrad,
                        row_sum: None,
                    },
                );
                live_saved += kept;
                casts_alive += seg_casts;
                // by op of the segment (counted from `a`)
                rel_again = ByOp::new(rel_seg.drain(..).map(|(r, j)| (r - a, j)).collect(), b - a);
            }
            let op = &t.ops[i];
            // gradients per logical tensor: a view gets its own, which its view op hands on
            for inp in &op.inputs {
                let r = inp.0;
                let ti = &t.tensors[r];
                if ti.producer != usize::MAX && ti.requires_grad && !grad[r] && !grad_done[r] {
                    grad[r] = true;
                    live_grad += bytes(r);
                    ev.push(Ev::Alloc {
                        slot: s_grad(r),
                        per_sample: bytes(r),
                        abs: 0.0,
                    });
                }
            }
            if op.param_grad_elems > 0.0 {
                let fresh = match op.param_key {
                    Some(k) => keys.insert(k),
                    None => true,
                };
                if fresh {
                    pgrad += op.param_grad_elems;
                    ev.push(Ev::ParamGrad {
                        slot: s_pgrad(i),
                        abs: op.param_grad_elems * pbytes,
                    });
                }
            }
            if op.bwd_extra > 0.0 {
                ev.push(Ev::Alloc {
                    slot: s_extra(i),
                    per_sample: op.bwd_extra,
                    abs: 0.0,
                });
                ev.push(Ev::Free { slot: s_extra(i) });
            }
            push_point(
                &mut pts,
                Point {
                    phase: Phase::Backward,
                    saved: live_saved,
                    transient: live_grad + op.bwd_extra,
                    act_grads: live_grad,
                    casts: casts_alive,
                    pgrad,
                    row_sum: None,
                },
            );
            // A recomputed tensor is held only by the node that unpacks it (non-reentrant
            // checkpoint's unpack hook drops its own reference), so it dies when the node's
            // `apply` returns: before the engine reduces a broadcast gradient to its input's
            // shape (a bias's sum and its staging buffer) and before the node's incoming
            // gradient is freed. Saved tensors outside checkpoints go later, with the node's
            // `release_variables` (H100 history of ViT-B/16 with checkpointing, CPU traces).
            let cast = (s_cast(i), op.weight_cast_bytes);
            if ck[st] {
                let cast = recomputed_casts[i].then_some(cast);
                let_go(
                    t,
                    &mut ev,
                    &mut alive,
                    &mut live_saved,
                    &mut casts_alive,
                    cast,
                    rel_again.of(i - a),
                );
            }
            if let Some((cols, rows_per_sample)) = op.row_sum {
                ev.push(Ev::RowSum {
                    slot: s_extra(i),
                    cols,
                    rows_per_sample,
                });
                ev.push(Ev::Free { slot: s_extra(i) });
                push_point(
                    &mut pts,
                    Point {
                        phase: Phase::Backward,
                        saved: live_saved,
                        transient: live_grad,
                        act_grads: live_grad,
                        casts: casts_alive,
                        pgrad,
                        row_sum: op.row_sum,
                    },
                );
            }
            for o in &op.outputs {
                let j = o.0;
                if grad[j] && !op.inputs.iter().any(|x| x.0 == j) {
                    grad[j] = false;
                    grad_done[j] = true;
                    live_grad -= bytes(j);
                    ev.push(Ev::Free { slot: s_grad(j) });
                }
            }
            // outside checkpoints (and a checkpoint's inputs, which its frame holds): with the
            // node's `release_variables`
            let cast = (!ck[st]).then_some(cast);
            let_go(
                t,
                &mut ev,
                &mut alive,
                &mut live_saved,
                &mut casts_alive,
                cast,
                rel_at.of(i),
            );
        }
    }
    let pgrad_total: f64 = t
        .params
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.elems() as f64)
        .sum();

    Profile {
        points: hull(pts, pgrad_total),
        pgrad_total,
        casts_total,
        saved_end,
        largest_alloc: largest,
        churn,
        saved_sizes: sizes,
        conv_workspace_max: t.conv_workspace_max,
        events: ev,
        slots: 2 * nt + 3 * nops,
    }
}

/// What a backward node lets go: its weight casts (`cast`: their slot and bytes) and the saved
/// tensors of `saved` still alive.
fn let_go(
    t: &Trace,
    ev: &mut Vec<Ev>,
    alive: &mut [bool],
    live_saved: &mut f64,
    casts_alive: &mut f64,
    cast: Option<(u32, f64)>,
    saved: &[usize],
) {
    if let Some((slot, bytes)) = cast {
        *casts_alive -= bytes;
        if bytes > 0.0 {
            ev.push(Ev::Free { slot });
        }
    }
    for &j in saved {
        if alive[j] {
            alive[j] = false;
            *live_saved -= t.tensors[j].bytes();
            ev.push(Ev::Free { slot: j as u32 });
        }
    }
}

/// Appends `q`, first dropping the points at the end that `q` dominates: same reduction shape
/// (or none), and for each gradient size `g` of `hull_linear`, at least their x and y and more
/// in one of them (computed as `hull_linear` computes them). Such a point is neither the
/// maximum for any batch size nor the point `hull` keeps among equal ones, so dropping it
/// leaves `hull`'s answer as it was, with fewer points to keep and sort (a step of NavDP
/// bf16-mixed with checkpointing: 5,991 -> 2,556).
fn push_point(pts: &mut Vec<Point>, q: Point) {
    let xq = q.saved + q.transient;
    while let Some(p) = pts.last() {
        let xp = p.saved + p.transient;
        let dominated = reduction_shape(p) == reduction_shape(&q)
            && xq >= xp
            && HULL_G.iter().all(|&g| {
                let (yq, yp) = (q.casts + g * q.pgrad, p.casts + g * p.pgrad);
                yq >= yp && (xq > xp || yq > yp)
            });
        if !dominated {
            break;
        }
        pts.pop();
    }
    pts.push(q);
}

/// The reduction in flight at a point, as bits: `hull` prunes each shape on its own, and only
/// points of one shape can dominate each other.
fn reduction_shape(p: &Point) -> Option<(u64, u64)> {
    p.row_sum.map(|(c, r)| (c, r.to_bits()))
}

/// The gradient byte sizes `hull_linear` keeps the maxima for.
const HULL_G: [f64; 3] = [0.0, 2.0, 4.0];

/// Keeps the points that can be the maximum (see `hull_linear`). Points with a reduction in
/// flight add a term that is the same function of the batch for the same reduction shape, so
/// each shape is pruned on its own; the order of the walk is kept.
fn hull(pts: Vec<Point>, pgrad_total: f64) -> Vec<Point> {
    // points grouped by reduction shape (the rows as bits), as indices into `pts`
    type Shape = Option<(u64, u64)>;
    let mut groups: Vec<(Shape, Vec<usize>)> = vec![(None, Vec::new())];
    for (i, p) in pts.iter().enumerate() {
        let key = reduction_shape(p);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    let mut kept: Vec<usize> = Vec::new();
    for (_, sel) in &groups {
        hull_linear(&pts, sel, pgrad_total, &mut kept);
    }
    kept.sort_unstable();
    kept.dedup();
    let mut keep = vec![false; pts.len()];
    for i in kept {
        keep[i] = true;
    }
    pts.into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(p, _)| p)
        .collect()
}

/// Adds to `kept` the indices among `sel` of the points that can be the maximum of
/// `b * (saved + transient) + casts + g * pgrad` for some batch `b >= 0` and gradient byte size
/// `g` in {0, 2, 4} (accumulation keeps all gradients: `g = 0` on the per-point part).
fn hull_linear(pts: &[Point], sel: &[usize], _pgrad_total: f64, kept: &mut Vec<usize>) {
    // An f64 as an integer of the same order (`-0.0` counts as `0.0`, as `partial_cmp` has it),
    // packed above a position: sorting the integers sorts by (value, position).
    let ordered = |v: f64| -> u128 {
        let b = (v + 0.0).to_bits();
        (if b >> 63 == 1 { !b } else { b | 1 << 63 }) as u128
    };
    // Points in the order of a stable sort by (x, y) for each g: sorted by x (then position)
    // once; only the runs of equal x are re-sorted by (y, position) per g.
    let x_of = |p: &Point| p.saved + p.transient;
    let mut by_x: Vec<u128> = sel
        .iter()
        .map(|&i| ordered(x_of(&pts[i])) << 64 | i as u128)
        .collect();
    by_x.sort_unstable();
    // what the hull reads, contiguous and in that order: (x, casts, pgrad, position)
    let c: Vec<(f64, f64, f64, usize)> = by_x
        .iter()
        .map(|&k| {
            let i = k as u64 as usize;
            let p = &pts[i];
            (x_of(p), p.casts, p.pgrad, i)
        })
        .collect();
    // runs of equal x, as (start, end) in `c`
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < c.len() {
        let mut end = start + 1;
        while end < c.len() && by_x[end] >> 64 == by_x[start] >> 64 {
            end += 1;
        }
        runs.push((start, end));
        start = end;
    }
    let mut idx: Vec<usize> = Vec::with_capacity(c.len());
    let mut run_keys: Vec<u128> = Vec::new();
    let mut ys: Vec<f64> = Vec::with_capacity(c.len());
    let mut h: Vec<usize> = Vec::new();
    for g in HULL_G {
        ys.clear();
        ys.extend(c.iter().map(|e| e.1 + g * e.2));
        let y = |k: usize| ys[k];
        let x = |k: usize| c[k].0;
        idx.clear();
        for &(start, end) in &runs {
            if end - start > 1 {
                run_keys.clear();
                // entries of a run are in position order: (y, entry) sorts by (y, position)
                run_keys.extend((start..end).map(|k| ordered(y(k)) << 64 | k as u128));
                run_keys.sort_unstable();
                idx.extend(run_keys.iter().map(|&r| r as u64 as usize));
            } else {
                idx.push(start);
            }
        }
        // upper hull (monotone chain), then keep the part where the slope is >= 0 in y vs x
        // from the right end: maxima of b*x + y with b >= 0 lie on it
        // of points equal in x and y only the last (by position) takes part: which one the
        // chain kept otherwise depended on the points before them
        h.clear();
        for (n, &i) in idx.iter().enumerate() {
            if idx
                .get(n + 1)
                .is_some_and(|&j| x(j) == x(i) && y(j) == y(i))
            {
                continue;
            }
            while h.len() >= 2 {
                let (o, a) = (h[h.len() - 2], h[h.len() - 1]);
                let cross = (x(a) - x(o)) * (y(i) - y(o)) - (y(a) - y(o)) * (x(i) - x(o));
                if cross >= 0.0 {
                    h.pop();
                } else {
                    break;
                }
            }
            h.push(i);
        }
        // from the max-y point (the last of equal ones) to the right end
        let top = h
            .iter()
            .enumerate()
            .max_by(|a, b| {
                y(*a.1)
                    .partial_cmp(&y(*b.1))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(k, _)| k)
            .unwrap_or(0);
        kept.extend(h[top..].iter().map(|&k| c[k].3));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::{Dt, Mode, T};

    fn allocs(p: &Profile, t: T) -> usize {
        p.events
            .iter()
            .filter(|e| matches!(e, Ev::Alloc { slot, .. } if *slot as usize == t.0))
            .count()
    }

    /// A trace with an input of 64 elements, inside repeated block 1.
    fn in_block(mode: Mode) -> (Trace, T) {
        let mut t = Trace::new(mode);
        let x = t.input(64.0, Dt::F32);
        t.enter("blocks.0", "blocks", true);
        (t, x)
    }

    /// The step with block 1 checkpointed.
    fn checkpointed(t: &Trace) -> Profile {
        let mut ck = vec![false; t.stages.len()];
        ck[1] = true;
        simulate(t, &ck)
    }

    proptest::proptest! {
        /// Dropping dominated points as they come changes nothing `hull` keeps. Small integer
        /// coordinates make ties and collinear points common.
        #[test]
        fn dropping_dominated_points_keeps_the_hull(raw in proptest::collection::vec(
            (0u8..6, 0u8..6, 0u8..4, 0u8..3, 0u8..3), 1..200,
        )) {
            let pts: Vec<Point> = raw
                .iter()
                .map(|&(x, t, c, g, r)| Point {
                    phase: if g == 0 { Phase::Forward } else { Phase::Backward },
                    saved: x as f64,
                    transient: t as f64 * 0.5,
                    act_grads: 0.0,
                    casts: c as f64,
                    pgrad: g as f64,
                    row_sum: (r > 0).then_some((r as u64, 1.0)),
                })
                .collect();
            let mut pruned = Vec::new();
            for p in pts.clone() {
                push_point(&mut pruned, p);
            }
            proptest::prop_assert_eq!(hull(pruned, 0.0), hull(pts, 0.0));
        }
    }

    /// A checkpointed MLP block with a residual, as in a ViT block: fc1 saves the block's input,
    /// the GELU saves fc1's output, fc2 saves the GELU's output, the residual add saves nothing.
    /// fc1, GELU, fc2 and a residual add in block 1; (trace, fc1's, GELU's, fc2's, add's output).
    fn mlp_block(mode: Mode) -> (Trace, T, T, T, T) {
        let (mut t, x) = in_block(mode);
        let h = t.linear("fc1", x, 64, 256, true, true, false);
        let g = t.unary_save_input(h);
        let o = t.linear("fc2", g, 256, 64, true, true, false);
        let z = t.add(o, x);
        t.leave();
        t.mse_loss(z);
        (t, h, g, o, z)
    }

    #[test]
    fn recomputation_stops_at_the_last_saved_tensor() {
        let (t, h, g, o, z) = mlp_block(Mode::Fp32);
        let p = checkpointed(&t);
        // forward, then again in the recomputation
        assert_eq!(allocs(&p, h), 2);
        assert_eq!(allocs(&p, g), 2);
        // fc2's save (its input) is packed before its output exists: `checkpoint` stops there,
        // and the residual add after it does not run again
        assert_eq!(allocs(&p, o), 1);
        assert_eq!(allocs(&p, z), 1);
        // without checkpointing nothing is recomputed
        let p = simulate(&t, &vec![false; t.stages.len()]);
        assert_eq!(allocs(&p, h), 1);
    }

    /// The checkpointed MLP block of `recomputation_stops_at_the_last_saved_tensor`, and the
    /// positions after the end of forward of: the GELU output's frees, fc2's bias reduction,
    /// the frees of fc2's output gradient, the allocations of that gradient and of fc1's output.
    fn mlp_backward_order(checkpoint: bool) -> (Vec<usize>, usize, Vec<usize>, usize, Vec<usize>) {
        let (t, h, g, o, _) = mlp_block(Mode::Fp32);
        let mut ck = vec![false; t.stages.len()];
        ck[1] = checkpoint;
        let prof = simulate(&t, &ck);
        let (nt, nops) = (t.tensors.len(), t.ops.len());
        let fc2 = t.tensors[o.0].producer;
        let end = prof
            .events
            .iter()
            .position(|e| *e == Ev::EndForward)
            .unwrap();
        let pos = |want: &dyn Fn(&Ev) -> bool| -> Vec<usize> {
            (end..prof.events.len())
                .filter(|&i| want(&prof.events[i]))
                .collect()
        };
        let g_slot = g.0 as u32;
        let o_grad = Slot::Grad(o.0).id(nt, nops);
        let sum = Slot::Workspace(fc2).id(nt, nops);
        let g_free = pos(&|e| matches!(e, Ev::Free { slot } if *slot == g_slot));
        let row_sum = pos(&|e| matches!(e, Ev::RowSum { slot, .. } if *slot == sum));
        let o_grad_free = pos(&|e| matches!(e, Ev::Free { slot } if *slot == o_grad));
        let o_grad_alloc = pos(&|e| matches!(e, Ev::Alloc { slot, .. } if *slot == o_grad));
        let h_alloc = pos(&|e| matches!(e, Ev::Alloc { slot, .. } if *slot == h.0 as u32));
        assert_eq!(
            (row_sum.len(), o_grad_alloc.len()),
            (1, 1),
            "{:?}",
            prof.events
        );
        (g_free, row_sum[0], o_grad_free, o_grad_alloc[0], h_alloc)
    }

    /// A recomputed tensor dies when the node that unpacked it returns: fc2's saved GELU output
    /// is freed before the engine sums fc2's bias gradient (staging buffer) and before fc2's
    /// incoming gradient is freed. Outside a checkpoint the saved tensor goes with the node's
    /// `release_variables`, after both (H100 history of ViT-B/16 with checkpointing, CPU traces).
    #[test]
    fn recomputed_saved_tensors_die_before_the_bias_sum() {
        let (g_free, sum, o_grad_free, _, _) = mlp_backward_order(true);
        assert_eq!(g_free.len(), 1);
        assert!(g_free[0] < sum && sum < o_grad_free[0]);
        let (g_free, sum, o_grad_free, _, _) = mlp_backward_order(false);
        assert!(sum < o_grad_free[0] && o_grad_free[0] < g_free[0]);
    }

    /// The residual add after fc2 saves nothing, so its backward runs before anything is
    /// unpacked: fc2's output gradient exists before the recomputation starts.
    #[test]
    fn ops_after_the_last_saver_run_backward_before_the_recomputation() {
        let (_, _, _, o_grad_alloc, h_alloc) = mlp_backward_order(true);
        assert_eq!(h_alloc.len(), 1, "fc1 recomputed once after forward");
        assert!(o_grad_alloc < h_alloc[0]);
    }

    /// In a recomputation, a tensor dies at its last use even when that op does not read it:
    /// under autocast the half-precision scores feed the softmax through an fp32 cast and are
    /// freed when the softmax returns. They must not stay alive to the end of the
    /// recomputation (they did, adding a score matrix to every recomputed attention).
    #[test]
    fn recomputed_temporaries_die_at_their_last_use() {
        let (mut t, x) = in_block(Mode::Mixed);
        let s = t.linear("scores", x, 64, 256, true, true, false);
        let p = t.softmax(s);
        let m = t.linear("out", p, 256, 64, true, true, false);
        t.unary_save_input(m);
        t.leave();
        let prof = checkpointed(&t);
        let pos = |want: &dyn Fn(&Ev) -> bool| -> Vec<usize> {
            let end = prof
                .events
                .iter()
                .position(|e| *e == Ev::EndForward)
                .unwrap();
            (end..prof.events.len())
                .filter(|&i| want(&prof.events[i]))
                .collect()
        };
        let slot = |t: T| t.0 as u32;
        let s_alloc = pos(&|e| matches!(e, Ev::Alloc { slot: x, .. } if *x == slot(s)));
        let s_free = pos(&|e| matches!(e, Ev::Free { slot: x } if *x == slot(s)));
        let m_alloc = pos(&|e| matches!(e, Ev::Alloc { slot: x, .. } if *x == slot(m)));
        assert_eq!((s_alloc.len(), m_alloc.len()), (1, 1), "{:?}", prof.events);
        assert!(
            s_free[0] > s_alloc[0] && s_free[0] < m_alloc[0],
            "{:?}",
            prof.events
        );
    }
}
