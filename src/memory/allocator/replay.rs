//! Replays a real allocator event stream (a snapshot's `device_traces`) through the simulator and
//! compares what the simulator reserves with what the real allocator reserved.
//!
//! The stream's `alloc` and `free_completed` entries drive the simulation (`free_requested` is
//! when the program dropped the tensor; the block returns to the pool at `free_completed`). The
//! real `segment_*` entries are only read to compute the real figures, except that without a
//! capacity a run of real `segment_free` entries means `torch.cuda.empty_cache()` (or a retry
//! after a failed cudaMalloc): the simulator releases its cached segments at that point too.
//!
//! A history can start mid-run (`max_entries` keeps only the newest entries). Blocks that were
//! alive before it started show up as frees of addresses never allocated in the stream, or as
//! allocated blocks of the final segments that the stream never allocated: the simulator is seeded
//! with those blocks (in that order) before the replay. Their placement is the simulator's own, so
//! a seeded replay is less exact than a complete one.
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{Allocator, AllocatorConfig, AllocatorStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Alloc,
    FreeRequested,
    FreeCompleted,
    SegmentAlloc,
    SegmentFree,
    SegmentMap,
    SegmentUnmap,
    Oom,
    Other,
}

impl Action {
    pub fn parse(s: &str) -> Action {
        match s {
            "alloc" => Action::Alloc,
            "free_requested" => Action::FreeRequested,
            "free_completed" => Action::FreeCompleted,
            "segment_alloc" => Action::SegmentAlloc,
            "segment_free" => Action::SegmentFree,
            "segment_map" => Action::SegmentMap,
            "segment_unmap" => Action::SegmentUnmap,
            "oom" => Action::Oom,
            _ => Action::Other,
        }
    }
}

/// One entry of a real allocator trace (frames dropped). For `oom`, `addr` is device_free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealEvent {
    pub action: Action,
    pub addr: u64,
    pub size: u64,
    pub stream: u64,
}

/// A real snapshot as `tests/fixtures/trace/convert_snapshots.py` writes it (gzip JSON): the
/// device trace, the blocks allocated at the end, and, for histories, step marks.
#[derive(Clone, Debug)]
pub struct Converted {
    pub events: Vec<RealEvent>,
    /// (address, requested size) of the blocks allocated in the final segments.
    pub live: Vec<(u64, u64)>,
    pub segments: u64,
    /// Sum of the final segments' sizes.
    pub reserved: u64,
    pub stats: serde_json::Value,
    /// (what, index of the first event at or after it): the forward and optimizer steps.
    pub marks: Vec<(String, usize)>,
}

impl Converted {
    /// Reads one from a gzip JSON file; None when it cannot be read or is not one.
    pub fn load(path: &std::path::Path) -> Option<Converted> {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).ok()?)
            .read_to_string(&mut s)
            .ok()?;
        Converted::from_json(&serde_json::from_str(&s).ok()?)
    }

    /// None when a field is missing or of the wrong type.
    pub fn from_json(v: &serde_json::Value) -> Option<Converted> {
        let events = v["events"]
            .as_array()?
            .iter()
            .map(|e| {
                Some(RealEvent {
                    action: Action::parse(e[0].as_str()?),
                    addr: e[1].as_u64()?,
                    size: e[2].as_u64()?,
                    stream: e[3].as_u64()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let segs = v["segments"].as_array()?;
        let mut live = Vec::new();
        let mut reserved = 0;
        for s in segs {
            reserved += s["total_size"].as_u64()?;
            for b in s["blocks"].as_array()? {
                if b["state"] == "active_allocated" {
                    live.push((b["address"].as_u64()?, b["requested_size"].as_u64()?));
                }
            }
        }
        let marks = match v.get("marks") {
            Some(m) => m
                .as_array()?
                .iter()
                .map(|x| Some((x[0].as_str()?.to_string(), x[1].as_u64()? as usize)))
                .collect::<Option<Vec<_>>>()?,
            None => Vec::new(),
        };
        Some(Converted {
            events,
            live,
            segments: segs.len() as u64,
            reserved,
            stats: v["stats"].clone(),
            marks,
        })
    }
}

/// What the real allocator did over the stream, read off its segment entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RealFigures {
    /// Peak of reserved bytes within the stream (relative to the reserved at its start).
    pub peak_reserved: u64,
    pub final_reserved: u64,
    pub final_segments: u64,
    pub peak_segments: u64,
    /// Index of the `oom` entry, if any.
    pub oom_at: Option<usize>,
    /// Index of the `alloc` entry that reached the peak reserved.
    pub peak_reserved_at: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayResult {
    pub events: usize,
    pub allocs: usize,
    /// Blocks alive before the stream began that the simulator was seeded with.
    pub seeded_blocks: usize,
    pub real: RealFigures,
    pub sim: AllocatorStats,
    pub sim_final_segments: u64,
    /// Index of the `alloc` entry the simulator could not serve (with a capacity).
    pub sim_oom_at: Option<usize>,
}

/// Reads the real figures from the segment entries.
pub fn real_figures(events: &[RealEvent]) -> RealFigures {
    let mut r = RealFigures::default();
    let (mut res, mut segs) = (0i128, 0i64);
    for (i, e) in events.iter().enumerate() {
        match e.action {
            Action::SegmentAlloc | Action::SegmentMap => {
                res += e.size as i128;
                if e.action == Action::SegmentAlloc {
                    segs += 1;
                }
                if res.max(0) as u64 > r.peak_reserved {
                    r.peak_reserved = res as u64;
                    r.peak_reserved_at = events[i..]
                        .iter()
                        .position(|x| x.action == Action::Alloc)
                        .map_or(i, |p| i + p);
                }
                r.peak_segments = r.peak_segments.max(segs.max(0) as u64);
            }
            Action::SegmentFree | Action::SegmentUnmap => {
                res -= e.size as i128;
                if e.action == Action::SegmentFree {
                    segs -= 1;
                }
            }
            Action::Oom if r.oom_at.is_none() => r.oom_at = Some(i),
            _ => {}
        }
    }
    r.final_reserved = res.max(0) as u64;
    r.final_segments = segs.max(0) as u64;
    r
}

/// Replays `events` through a simulator built from `cfg`. `live_at_end` are the (address, size)
/// of blocks allocated in the final segments (to find blocks older than the stream).
pub fn replay(
    events: &[RealEvent],
    live_at_end: &[(u64, u64)],
    cfg: AllocatorConfig,
) -> ReplayResult {
    let capped = cfg.capacity.is_some();
    let mut sim = Allocator::new(cfg);
    let mut map: HashMap<u64, u64> = HashMap::new();

    // Seed blocks alive before the stream.
    let mut seen: HashSet<u64> = HashSet::new();
    let mut seeds: Vec<(u64, u64, u64)> = Vec::new();
    for e in events {
        match e.action {
            Action::Alloc => {
                seen.insert(e.addr);
            }
            Action::FreeCompleted if !seen.contains(&e.addr) => {
                seen.insert(e.addr);
                seeds.push((e.addr, e.size, e.stream));
            }
            _ => {}
        }
    }
    let allocated_in_stream: HashSet<u64> = events
        .iter()
        .filter(|e| e.action == Action::Alloc)
        .map(|e| e.addr)
        .collect();
    for &(addr, size) in live_at_end {
        if !allocated_in_stream.contains(&addr) && !seeds.iter().any(|s| s.0 == addr) {
            seeds.push((addr, size, 0));
        }
    }
    let seeded_blocks = seeds.len();
    for &(addr, size, stream) in &seeds {
        if let Ok(a) = sim.malloc(size, stream) {
            map.insert(addr, a);
        }
    }
    sim.reset_peaks();
    let base_reserved = sim.stats().reserved;

    let mut allocs = 0;
    let mut sim_oom_at = None;
    let mut in_free_run = false;
    for (i, e) in events.iter().enumerate() {
        match e.action {
            Action::Alloc => {
                allocs += 1;
                match sim.malloc(e.size, e.stream) {
                    Ok(a) => {
                        map.insert(e.addr, a);
                    }
                    Err(_) => {
                        sim_oom_at = Some(i);
                        break;
                    }
                }
            }
            Action::FreeCompleted => {
                if let Some(a) = map.remove(&e.addr) {
                    sim.free(a);
                }
            }
            // The request that failed has no alloc entry, only this one (size = round_size):
            // ask the simulator for it too.
            Action::Oom if capped => match sim.malloc(e.size, e.stream) {
                Err(_) => {
                    sim_oom_at = Some(i);
                    break;
                }
                Ok(a) => {
                    sim.free(a);
                }
            },
            Action::SegmentFree if !capped && !in_free_run => {
                sim.release_cached_blocks();
            }
            _ => {}
        }
        in_free_run = e.action == Action::SegmentFree;
    }
    let mut stats = sim.stats().clone();
    stats.peak_reserved -= base_reserved.min(stats.peak_reserved);
    let sim_final_segments = sim.segments().len() as u64;
    ReplayResult {
        events: events.len(),
        allocs,
        seeded_blocks,
        real: real_figures(events),
        sim: stats,
        sim_final_segments,
        sim_oom_at,
    }
}
