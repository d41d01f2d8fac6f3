//! One file per subcommand: its flags (`Args`) and `run`, which calls the analysis and hands the
//! result to `report`. Returns the process exit code (errors become exit 2 in `cli`).
pub mod diagnose;
pub mod estimate;
pub mod fit;
pub mod fix;
pub mod gpu;
pub mod plan;
pub mod probe;
pub mod run;
pub mod snapshot;
pub mod validate;
