#!/usr/bin/env python3
"""Makes a large synthetic PyTorch memory snapshot for the `oomdoc snapshot` benchmark.

Scales a real snapshot's trace (default: tests/fixtures/snapshots/gpt2_bf16_b4_two_steps_history.pickle.gz)
by repeating it with distinct entries (addresses and times shifted per copy) until the uncompressed
pickle reaches --size bytes (it ends a little above: 1,079,932,890 bytes for --size 1073741824).
Frames are shared the way PyTorch shares them in `_snapshot()`: every frame dict is one object
referenced from many stacks (memo references in the pickle), and every trace entry gets its own
frames list (each allocation has its own traceback), as in Module.cpp/py_symbolize.
Written with pickle protocol 4, as torch.cuda.memory._dump_snapshot does on CPython 3.8-3.13.

usage: make_snapshot.py OUT.pickle [--size BYTES] [--source FIXTURE.pickle.gz]
"""
import argparse, gzip, os, pickle, sys

here = os.path.dirname(os.path.abspath(__file__))
default_src = os.path.join(here, "..", "tests", "fixtures", "snapshots",
                           "gpt2_bf16_b4_two_steps_history.pickle.gz")
ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--size", type=int, default=1 << 30)
ap.add_argument("--source", default=default_src)
a = ap.parse_args()

with gzip.open(a.source, "rb") as f:
    snap = pickle.load(f)
trace = snap["device_traces"][0]
t0, t1 = trace[0]["time_us"], trace[-1]["time_us"]
span = (t1 - t0) + 1000


def scaled(copies):
    out = []
    for k in range(copies):
        shift_addr = k << 36  # distinct addresses per copy (pairs alloc/free stay matched)
        shift_t = k * span
        for e in trace:
            n = dict(e)
            if "addr" in n:
                n["addr"] = e["addr"] + shift_addr
            n["time_us"] = e["time_us"] + shift_t
            if "frames" in n:
                n["frames"] = list(e["frames"])  # own list, shared frame dicts
            out.append(n)
    return dict(snap, device_traces=[out])


# Size of the whole file for 1 and 3 copies: the copies after the first cost more than the
# first (their memo references are wider), so the copy count is sized on the whole pickle.
s1 = len(pickle.dumps(scaled(1), protocol=4))
s3 = len(pickle.dumps(scaled(3), protocol=4))
per_copy = (s3 - s1) / 2
copies = 1 + max(0, -(-(a.size - s1) // int(per_copy)))
snap = scaled(copies)
with open(a.out, "wb") as f:
    pickle.dump(snap, f, protocol=4)
n = len(snap["device_traces"][0])
print(f"{a.out}: {os.path.getsize(a.out)} bytes, {n} trace entries ({copies} copies)", file=sys.stderr)
