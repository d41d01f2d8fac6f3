//! `plan`: searching the knobs and ranking what fits by predicted throughput.
pub mod analysis;
pub mod engines;
pub mod report;
pub mod search;
pub mod steps;
pub mod throughput;
pub mod words;
