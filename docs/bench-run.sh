#!/bin/sh
# Overhead of `oomdoc run`: start/stop latency and output passthrough throughput.
# Usage: docs/bench-run.sh [path/to/oomdoc]   (after cargo build --release)
R=${1:-./target/release/oomdoc}
uptime
python3 - "$R" <<'PY'
import subprocess, sys, time
R = sys.argv[1]
def med(cmd, n=30):
    ts = []
    for _ in range(n):
        s = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ts.append(time.perf_counter() - s)
    ts.sort()
    return ts[len(ts) // 2]
a = med(["true"]); b = med([R, "run", "--quiet", "--", "true"])
print("start+stop: true %.1f ms, oomdoc run -- true %.1f ms (median of 30)" % (a * 1e3, b * 1e3))
gen = "yes 'step 100/1000 loss 2.3456 lr 1.0e-04 tokens/s 123456 mem 12.3 GiB' | head -c 1073741824"
for label, cmd in (("direct", ["sh", "-c", gen]), ("oomdoc run", [R, "run", "--quiet", "--", "sh", "-c", gen])):
    best = min(med(cmd, 1) for _ in range(3))
    print("1 GiB of log lines, %s: %.2f s = %.0f MiB/s (best of 3)" % (label, best, 1024 / best))
PY
