#!/usr/bin/env python3
"""Write the configurations `oomdoc plan` proposes, with its predictions, for a GPU check.

Usage: python scripts/plan-cases.py OOMDOC OUT.json
Each case: {name, workload, model_args, budget_bytes, knobs, predicted: {peak_allocated_bytes,
peak_reserved_bytes, device_total_bytes, step_time_s}}; `scripts/gpu-measure.py --parts plancheck
--plan-cases OUT.json` runs them with the allocator capped at the budget.
"""
import json, subprocess, sys

GIB = 2**30
# (workload name in gpu-measure.py, oomdoc model arguments, GPU, memory budget)
PLANS = [
    ("navdp", ["--model", "preset:navdp"], "h200", "12GiB", 12 * GIB),
    ("gpt2", ["--model", "hf:tests/fixtures/calibration/models/gpt2-124m.config.json", "--seq-len", "1024"],
     "h200", "12GiB", 12 * GIB),
    ("vit_b16", ["--model", "preset:vit-b16", "--batch", "128"], "h200", "8GiB", 8 * GIB),
]


def main():
    oomdoc, out = sys.argv[1], sys.argv[2]
    cases = []
    for wl, margs, gpu, mem, budget in PLANS:
        p = subprocess.run([oomdoc, "plan", *margs, "--gpu", gpu, "--gpu-memory", mem, "--format", "json"],
                           capture_output=True, text=True)
        d = json.loads(p.stdout)
        for kind, c in (d.get("combinations") or {}).items():
            if not c:
                continue
            cases.append(dict(name=f"{wl}_{kind}", workload=wl, model_args=margs, gpu=gpu, budget_bytes=budget,
                              knobs=c["knobs"], predicted={k: c[k] for k in (
                                  "peak_allocated_bytes", "peak_reserved_bytes", "device_total_bytes", "step_time_s")}))
    json.dump(cases, open(out, "w"), indent=1)
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
