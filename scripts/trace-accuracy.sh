#!/usr/bin/env bash
# The traced tier against the H100 calibration measurements (docs/accuracy.md, "Traced tier"):
# estimates from the committed calibration traces (tests/fixtures/trace/calibration/, made on the
# CPU by scripts/trace-calibration.py) at each measured batch size, vs measured peak reserved memory.
# Rows without a trace of their own are estimated through the checkpointing / precision rules
# and reported separately. Usage: scripts/trace-accuracy.sh [TRACE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-tests/fixtures/trace/calibration}
cargo run --release --quiet --example trace_accuracy -- \
  tests/fixtures/trace/calibration/measurements-h100-torch2.11.jsonl "$dir" --transform
