//! `plan`: searching the knobs and ranking what fits by predicted throughput.
