//! The "current state" of a plan, read off the user's OOM log with the `diagnose` parser.
use std::io::BufReader;
use std::path::Path;

use anyhow::Context;

use super::analysis::LogState;

/// The first GPU out-of-memory event of the log (`None` when it has none).
pub fn read(path: &Path) -> anyhow::Result<Option<LogState>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open the log", path.display()))?;
    let report = crate::oom::parse_reader(BufReader::new(file))
        .with_context(|| format!("{}: cannot read the log", path.display()))?;
    // The GPU's own failure (with sizes) is what the plan is about; host-side kills are not.
    let ev = report
        .events
        .iter()
        .find(|e| e.total_capacity_bytes.is_some() || e.allowed_bytes.is_some())
        .or_else(|| report.events.first());
    Ok(ev.map(|e| LogState {
        line: e.line,
        kind: e.kind.name().to_string(),
        total_capacity_bytes: e.total_capacity_bytes,
        allowed_bytes: e.allowed_bytes,
        process_in_use_bytes: e.process_in_use_bytes,
        allocated_bytes: e.allocated_bytes,
        reserved_unallocated_bytes: e.reserved_unallocated_bytes,
        free_bytes: e.free_bytes,
        requested_bytes: e.requested_bytes,
    }))
}

impl LogState {
    /// What the process could use: the per-process cap when one was set, else the card's capacity.
    pub fn usable_bytes(&self) -> Option<u64> {
        self.allowed_bytes.or(self.total_capacity_bytes)
    }
}
