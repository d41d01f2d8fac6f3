//! `plan`: searching the knobs and ranking what fits by predicted throughput.
pub mod analysis;
pub mod calibrate;
pub mod engines;
pub mod log;
pub mod model_eval;
pub mod report;
pub mod search;
pub mod steps;
pub mod throughput;
pub mod words;
