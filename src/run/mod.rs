//! Running a training command under watch (`run`) and finding a batch size by real trials (`fit`).
//!
//! `exec` runs one command (process group, streamed output with a bounded tail, GPU sampling,
//! signals, timeout, no orphans); `detect` spots out-of-memory lines; `hook` injects the
//! `--snapshot-on-oom` Python hook; `fit` is the batch-size search; `report` renders both.
pub mod detect;
pub mod exec;
pub mod fit;
pub mod hook;
pub mod procs;
pub mod report;
