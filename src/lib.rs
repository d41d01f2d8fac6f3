//! oomdoc: explains GPU out-of-memory failures and computes what fits.
//!
//! Analysis modules (`oom`, `model`, `memory`, `plan`, `fix`, `snapshot`, `gpu`, `run`) produce
//! plain serialisable data; `report` turns that data into text, markdown, JSON or HTML.
//! Nothing outside `report` and `cli` prints.

pub mod cli;
pub mod commands;
pub mod error;
pub mod fix;
pub mod gpu;
pub mod knobs;
pub mod memory;
pub mod model;
pub mod oom;
pub mod plan;
pub mod report;
pub mod run;
pub mod snapshot;
pub mod units;
