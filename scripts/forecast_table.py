"""Token forecast per solver on the demo model: PSNR against the converged reference and against full evaluation.

    python scripts/forecast_table.py --cfg 1.5 --steps 25 --images 32 --json bench/forecast/table-g1.5.json

One process, one machine (OMP_NUM_THREADS=1 on a shared machine); the reference is the
yardstick's (cached under engines/yardstick/).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from dip_export.checkpoint import resolve_model
from dip_export.generate import make_plan
from dip_export.measure.yardstick import Yardstick, _run, psnr, reference_images
from dip_export.runtime.backends import BackendSpec, make_torch_engine
from dip_export.sampling import SamplerSettings, sample_counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--solvers", default="euler,ab2,ab3,dpmpp_2m,unipc")
    ap.add_argument("--ks", default="2,3")
    ap.add_argument("--modes", default="off,linear,quadratic,auto")
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    loaded = resolve_model(None, None)
    net = make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
    y = Yardstick(num_samples=a.images, cfg=a.cfg, batch=a.images)
    plan = make_plan(loaded.config.num_classes, num_samples=y.num_samples, seed=y.seed)
    base = SamplerSettings(steps=a.steps, cfg=a.cfg)
    ref = reference_images(net, loaded, plan, y, base)
    rows = []
    for solver in a.solvers.split(","):
        full_settings = replace(base, method=solver)
        full, _ = _run(net, loaded, plan, y, full_settings)
        rows.append({"solver": solver, "k": 1, "forecast": "full", "psnr_ref_db": psnr(full, ref.images), "psnr_full_db": None,
                     "backbone_calls": sample_counts(full_settings)["backbone_calls"]})  # fmt: skip
        for k in (int(v) for v in a.ks.split(",")):
            for mode in a.modes.split(","):
                s = replace(full_settings, cache_interval=k, token_forecast=mode)
                start = time.perf_counter()
                images, _ = _run(net, loaded, plan, y, s)
                rows.append({"solver": solver, "k": k, "forecast": mode, "psnr_ref_db": psnr(images, ref.images),
                             "psnr_full_db": psnr(images, full), "backbone_calls": sample_counts(s)["backbone_calls"],
                             "seconds": time.perf_counter() - start})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    out = {"settings": {**y.__dict__, "steps": a.steps, "reference": ref.label}, "results": rows}
    a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
