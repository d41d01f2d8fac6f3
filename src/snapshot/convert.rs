//! From the decoded pickle value tree to the typed [`Snapshot`]. Errors name the field path.
use std::cell::Ref;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::pickle::{drop_values, Decoded, Map, Seq, Value};
use super::{
    Action, Annotation, Block, BlockState, Segment, Snapshot, SnapshotFormat, StackId, TraceEntry,
};

type Res<T> = Result<T, String>;

pub fn snapshot(d: Decoded) -> Res<Snapshot> {
    let Decoded {
        root,
        frames,
        stacks,
        traces,
        strings,
        cells,
    } = d;
    let mut cx = Cx {
        strings,
        traces,
        taken: Vec::new(),
    };
    let out = match &root {
        Value::Dict(_) => cx.dict_form(&root),
        Value::List(_) => cx.legacy(&root),
        other => Err(format!(
            "the pickle holds a {}, not the dict (or 1.13 list) of segments that _snapshot() returns",
            other.type_name()
        )),
    };
    drop_values([root]);
    drop(cells);
    let (segments, device_traces, external_annotations, allocator_settings, format) = out?;
    Ok(Snapshot {
        format,
        segments,
        device_traces,
        external_annotations,
        allocator_settings,
        frames,
        stacks,
    })
}

type Parts = (
    Vec<Segment>,
    Vec<Vec<TraceEntry>>,
    Vec<Annotation>,
    Vec<(String, String)>,
    SnapshotFormat,
);

struct Cx {
    strings: HashMap<String, Arc<str>, super::pickle::FxBuild>,
    /// Trace entries converted while decoding (moved out whole in the usual case).
    traces: Vec<TraceEntry>,
    /// Which of `traces` were placed, when they are placed one by one (empty until then).
    taken: Vec<bool>,
}

fn items<'a>(v: &'a Value, path: &dyn Fn() -> String) -> Res<Ref<'a, Vec<(Value, Value)>>> {
    match v {
        Value::Dict(rc) => {
            let b = rc.borrow();
            Ref::filter_map(b, |m| match &m.state {
                Map::Items(i) => Some(i),
                Map::Frame(_) | Map::Trace(_) => None,
            })
            .map_err(|_| format!("{}: expected a dict, found a stack frame", path()))
        }
        other => Err(format!(
            "{}: expected a dict, found {}",
            path(),
            other.type_name()
        )),
    }
}

fn list_items(v: &Value, path: &dyn Fn() -> String) -> Res<Vec<Value>> {
    match v {
        Value::List(rc) => match &rc.borrow().state {
            Seq::Items(i) => Ok(i.clone()),
            Seq::Stack(_) | Seq::Frames(_) => {
                Err(format!("{}: expected a list, found stack frames", path()))
            }
        },
        Value::Tuple(t) => Ok((**t).clone()),
        other => Err(format!(
            "{}: expected a list, found {}",
            path(),
            other.type_name()
        )),
    }
}

/// Takes a list's items out (without copying when nothing else holds the list).
fn take_list(v: Value, path: &dyn Fn() -> String) -> Res<Vec<Value>> {
    match v {
        Value::List(rc) => match Rc::try_unwrap(rc) {
            Ok(cell) => match cell.into_inner().state {
                Seq::Items(i) => Ok(i),
                Seq::Stack(_) | Seq::Frames(_) => {
                    Err(format!("{}: expected a list, found stack frames", path()))
                }
            },
            Err(rc) => list_items(&Value::List(rc), path),
        },
        other => list_items(&other, path),
    }
}

fn get<'a>(items: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    items.iter().find_map(|(k, v)| match k {
        Value::Str(s) if s.as_str() == key => Some(v),
        _ => None,
    })
}

fn int(v: &Value, path: &dyn Fn() -> String) -> Res<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i64),
        Value::BigInt(_) => Err(format!("{}: integer out of range", path())),
        other => Err(format!(
            "{}: expected int, found {}",
            path(),
            other.type_name()
        )),
    }
}

fn uint(v: &Value, path: &dyn Fn() -> String) -> Res<u64> {
    let i = int(v, path)?;
    u64::try_from(i).map_err(|_| format!("{}: negative value {i}", path()))
}

fn req<'a>(items: &'a [(Value, Value)], key: &str, path: &dyn Fn() -> String) -> Res<&'a Value> {
    get(items, key).ok_or_else(|| format!("{}: missing field '{key}'", path()))
}

fn req_u64(items: &[(Value, Value)], key: &str, path: &dyn Fn() -> String) -> Res<u64> {
    let p = || format!("{}.{key}", path());
    uint(req(items, key, path)?, &p)
}

fn opt_i64(items: &[(Value, Value)], key: &str, path: &dyn Fn() -> String) -> Res<Option<i64>> {
    match get(items, key) {
        None | Some(Value::None) => Ok(None),
        Some(v) => {
            let p = || format!("{}.{key}", path());
            int(v, &p).map(Some)
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Value::None => "None".to_string(),
        other => format!("<{}>", other.type_name()),
    }
}

fn stack_of(v: Option<&Value>, path: &dyn Fn() -> String) -> Res<StackId> {
    match v {
        None | Some(Value::None) => Ok(StackId(0)),
        Some(Value::Stack(id)) => Ok(StackId(*id)),
        Some(Value::List(rc)) => match &rc.borrow().state {
            Seq::Stack(id) => Ok(StackId(*id)),
            Seq::Items(i) if i.is_empty() => Ok(StackId(0)),
            Seq::Items(_) | Seq::Frames(_) => Err(format!(
                "{}.frames: expected a list of {{filename, line, name}} dicts",
                path()
            )),
        },
        Some(other) => Err(format!(
            "{}.frames: expected a list, found {}",
            path(),
            other.type_name()
        )),
    }
}

impl Cx {
    fn dict_form(&mut self, root: &Value) -> Res<Parts> {
        let top = || "top level".to_string();
        // Take the traces out of the tree first, so that each entry's dict is freed as soon as it
        // has been converted (nothing else refers to it once the memo is gone).
        let traces_v: Option<Value> = match root {
            Value::Dict(rc) => match &mut rc.borrow_mut().state {
                Map::Items(items) => items
                    .iter_mut()
                    .find(|(k, _)| matches!(k, Value::Str(s) if s.as_str() == "device_traces"))
                    .map(|(_, v)| std::mem::replace(v, Value::None)),
                _ => None,
            },
            _ => None,
        };
        let it = items(root, &top)?;
        let segs_v = get(&it, "segments").ok_or(
            "the top-level dict has no 'segments' key (is this a torch.cuda.memory._snapshot() dump?)",
        )?;
        let segments = self.segments(segs_v)?;
        let mut device_traces = Vec::new();
        if let Some(tr) = traces_v {
            let p = || "device_traces".to_string();
            for (dev, list) in take_list(tr, &p)?.into_iter().enumerate() {
                let pd = || format!("device_traces[{dev}]");
                let entries = take_list(list, &pd)?;
                // Usual case: the entries are exactly the ones converted while decoding, in order;
                // move them (in place, no copy) instead of taking them one by one.
                let identity = entries.len() == self.traces.len()
                    && entries
                        .iter()
                        .enumerate()
                        .all(|(i, e)| matches!(e, Value::Trace(t) if *t as usize == i))
                    && self.taken.is_empty();
                if identity {
                    drop(entries);
                    device_traces.push(std::mem::take(&mut self.traces));
                    continue;
                }
                let mut out = Vec::with_capacity(entries.len());
                for (i, e) in entries.into_iter().enumerate() {
                    let pe = || format!("device_traces[{dev}][{i}]");
                    out.push(self.trace_entry(&e, &pe)?);
                    drop_values([e]);
                }
                device_traces.push(out);
            }
        }
        let mut external_annotations = Vec::new();
        if let Some(a) = get(&it, "external_annotations") {
            let p = || "external_annotations".to_string();
            for (i, v) in list_items(a, &p)?.iter().enumerate() {
                let pa = || format!("external_annotations[{i}]");
                let ai = items(v, &pa)?;
                external_annotations.push(Annotation {
                    stage: get(&ai, "stage").map(text).unwrap_or_default(),
                    name: get(&ai, "name").map(text).unwrap_or_default(),
                    device: opt_i64(&ai, "device", &pa)?.unwrap_or(0),
                    time_us: opt_i64(&ai, "time_us", &pa)?.unwrap_or(0),
                });
            }
        }
        let mut allocator_settings = Vec::new();
        if let Some(s) = get(&it, "allocator_settings") {
            let p = || "allocator_settings".to_string();
            for (k, v) in items(s, &p)?.iter() {
                let val = match v {
                    Value::Dict(_) => {
                        let pk = || format!("allocator_settings.{}", text(k));
                        let inner = items(v, &pk)?;
                        inner
                            .iter()
                            .map(|(a, b)| format!("{}:{}", text(a), text(b)))
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                    _ => text(v),
                };
                allocator_settings.push((text(k), val));
            }
        }
        Ok((
            segments,
            device_traces,
            external_annotations,
            allocator_settings,
            SnapshotFormat::Dict,
        ))
    }

    fn legacy(&mut self, root: &Value) -> Res<Parts> {
        let segments = self.segments(root)?;
        Ok((
            segments,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            SnapshotFormat::LegacySegmentList,
        ))
    }

    fn segments(&mut self, v: &Value) -> Res<Vec<Segment>> {
        let p = || "segments".to_string();
        let list = list_items(v, &p)?;
        let mut out = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            let ps = || format!("segments[{i}]");
            out.push(self.segment(s, &ps)?);
        }
        Ok(out)
    }

    fn segment(&mut self, v: &Value, path: &dyn Fn() -> String) -> Res<Segment> {
        let it = items(v, path)?;
        let address = req_u64(&it, "address", path)?;
        let total_size = req_u64(&it, "total_size", path)?;
        let pb = || format!("{}.blocks", path());
        let blocks_v = list_items(req(&it, "blocks", path)?, &pb)?;
        let mut blocks = Vec::with_capacity(blocks_v.len());
        let mut at = address;
        for (j, b) in blocks_v.iter().enumerate() {
            let pbj = || format!("{}.blocks[{j}]", path());
            let block = self.block(b, at, &pbj)?;
            at = block.address.saturating_add(block.size);
            blocks.push(block);
        }
        let sum = |f: &dyn Fn(&Block) -> Option<u64>| blocks.iter().filter_map(f).sum::<u64>();
        let allocated_default = sum(&|b| b.is_allocated().then_some(b.size));
        let active_default = sum(&|b| b.is_active().then_some(b.size));
        let requested_default = sum(&|b| b.is_active().then_some(b.requested_size));
        let segment_type = match get(&it, "segment_type") {
            Some(Value::Str(s)) => s.to_string(),
            // 1.13 files have no segment_type: the pool follows from the size (kSmallBuffer = 2 MiB
            // segments are the small pool, CUDACachingAllocator.cpp).
            _ => if total_size == 2 << 20 {
                "small"
            } else {
                "large"
            }
            .to_string(),
        };
        let segment_pool_id = match get(&it, "segment_pool_id") {
            Some(Value::Tuple(t)) if t.len() == 2 => {
                let p = || format!("{}.segment_pool_id", path());
                (int(&t[0], &p)?, int(&t[1], &p)?)
            }
            _ => (0, 0),
        };
        Ok(Segment {
            device: opt_i64(&it, "device", path)?.unwrap_or(0),
            address,
            total_size,
            allocated_size: opt_i64(&it, "allocated_size", path)?
                .map(|v| v.max(0) as u64)
                .unwrap_or(allocated_default),
            active_size: opt_i64(&it, "active_size", path)?
                .map(|v| v.max(0) as u64)
                .unwrap_or(active_default),
            requested_size: opt_i64(&it, "requested_size", path)?
                .map(|v| v.max(0) as u64)
                .unwrap_or(requested_default),
            stream: opt_i64(&it, "stream", path)?.unwrap_or(0),
            segment_type,
            segment_pool_id,
            is_expandable: matches!(get(&it, "is_expandable"), Some(Value::Bool(true))),
            frames: stack_of(get(&it, "frames"), path)?,
            blocks,
        })
    }

    fn block(&mut self, v: &Value, at: u64, path: &dyn Fn() -> String) -> Res<Block> {
        let it = items(v, path)?;
        let size = req_u64(&it, "size", path)?;
        let state = match req(&it, "state", path)? {
            Value::Str(s) => match s.as_str() {
                "active_allocated" => BlockState::ActiveAllocated,
                "active_pending_free" | "active_awaiting_free" => BlockState::ActivePendingFree,
                "inactive" => BlockState::Inactive,
                other => return Err(format!("{}.state: unknown block state '{other}'", path())),
            },
            other => {
                return Err(format!(
                    "{}.state: expected str, found {}",
                    path(),
                    other.type_name()
                ))
            }
        };
        let address = match get(&it, "address") {
            Some(v) => {
                let p = || format!("{}.address", path());
                uint(v, &p)?
            }
            None => at,
        };
        // 1.13/2.0: `history: [{addr, real_size, frames}]`, newest last; the newest entry is the
        // current allocation of an allocated block.
        let mut frames = stack_of(get(&it, "frames"), path)?;
        let mut requested = opt_i64(&it, "requested_size", path)?.map(|v| v.max(0) as u64);
        if get(&it, "frames").is_none() {
            if let Some(h) = get(&it, "history") {
                let ph = || format!("{}.history", path());
                if let Some(last) = list_items(h, &ph)?.last() {
                    let hi = items(last, &ph)?;
                    frames = stack_of(get(&hi, "frames"), &ph)?;
                    if requested.is_none() {
                        requested = opt_i64(&hi, "real_size", &ph)?.map(|v| v.max(0) as u64);
                    }
                }
            }
        }
        Ok(Block {
            address,
            size,
            requested_size: requested.unwrap_or(if state == BlockState::Inactive {
                0
            } else {
                size
            }),
            state,
            frames,
        })
    }

    fn trace_entry(&mut self, v: &Value, path: &dyn Fn() -> String) -> Res<TraceEntry> {
        if let Value::Trace(i) = v {
            let i = *i as usize;
            if self.taken.len() < self.traces.len() {
                self.taken.resize(self.traces.len(), false);
            }
            return match (self.traces.get(i), self.taken.get_mut(i)) {
                (Some(e), Some(t)) if !*t => {
                    *t = true;
                    Ok(e.clone())
                }
                _ => Err(format!("{}: trace entry referenced twice", path())),
            };
        }
        let it = items(v, path)?;
        trace_from_items(&it, &mut self.strings).map_err(|e| format!("{}{e}", path()))
    }
}

/// Converts a trace-entry dict in one pass over its keys. Errors start with `.field`.
pub(crate) fn trace_from_items(
    items: &[(Value, Value)],
    strings: &mut HashMap<String, Arc<str>, super::pickle::FxBuild>,
) -> Res<TraceEntry> {
    trace_from_pairs(items.iter().map(|(k, v)| (k, v)), strings)
}

/// [`trace_from_items`] over any sequence of key/value pairs.
pub(crate) fn trace_from_pairs<'a>(
    items: impl Iterator<Item = (&'a Value, &'a Value)>,
    strings: &mut HashMap<String, Arc<str>, super::pickle::FxBuild>,
) -> Res<TraceEntry> {
    let mut action = None;
    let mut addr = 0u64;
    let mut size = None;
    let mut stream = 0i64;
    let mut time_us = None;
    let mut device_free = None;
    let mut frames = StackId(0);
    let mut compile_context = None;
    let mut user_metadata = None;
    let mut intern = |s: &str| -> Arc<str> {
        if let Some(a) = strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        strings.insert(s.to_string(), a.clone());
        a
    };
    for (k, v) in items {
        let Value::Str(k) = k else { continue };
        let key = k.as_str();
        let p = || format!(".{key}");
        match key {
            "action" => match v {
                Value::Str(s) => action = Some(Action::parse(s)),
                other => {
                    return Err(format!(
                        ".action: expected str, found {}",
                        other.type_name()
                    ))
                }
            },
            "addr" => addr = uint(v, &p)?,
            "size" => size = Some(uint(v, &p)?),
            "stream" => stream = int(v, &p)?,
            "time_us" if !matches!(v, Value::None) => time_us = Some(int(v, &p)?),
            "device_free" => device_free = Some(uint(v, &p)?),
            "frames" => frames = stack_of(Some(v), &|| String::new())?,
            "compile_context" => {
                if let Value::Str(s) = v {
                    compile_context = Some(intern(s));
                }
            }
            "user_metadata" => {
                if let Value::Str(s) = v {
                    user_metadata = Some(intern(s));
                }
            }
            _ => {}
        }
    }
    Ok(TraceEntry {
        action: action.ok_or(": missing field 'action'")?,
        addr,
        size: size.ok_or(": missing field 'size'")?,
        stream,
        time_us,
        device_free,
        frames,
        compile_context,
        user_metadata,
    })
}
