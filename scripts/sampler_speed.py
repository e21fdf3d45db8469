"""Time several sampler settings on one engine in one process (dip-bench's timing, other rows).

dip-bench times backends at one sampler setting (plus its fixed --variants); this times the sampler
settings that the solver and token-forecast results name, on one model and backend, same seeds,
so their ratios come from one run. Quality is measured on the demo model by the yardstick
(`dip-bench --samplers`), not here: random-weight presets make images whose PSNR says little.

    python scripts/sampler_speed.py --preset dip-b-16 --cfg 4 \
        euler:100 euler:25 euler:25:2:linear ab2:25 ab2:25:2:linear
Each setting is SAMPLER:STEPS[:K[:FORECAST]]; the first is the baseline of the speed-up column.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from dip_export.checkpoint import resolve_model
from dip_export.measure.bench import BenchSettings, machine_info, run_backend
from dip_export.runtime.backends import BackendSpec, make_torch_engine
from dip_export.sampling import SamplerSettings, sample_counts


def parse_setting(text: str, cfg: float) -> SamplerSettings:
    method, steps, *rest = text.split(":")
    k = int(rest[0]) if rest else 1
    forecast = rest[1] if len(rest) > 1 else "off"
    return SamplerSettings(steps=int(steps), cfg=cfg, method=method, cache_interval=k, token_forecast=forecast)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="SAMPLER:STEPS[:K[:FORECAST]], the first is the baseline")
    parser.add_argument("--preset", default=None, help="random-weight architecture; omitted: the demo model")
    parser.add_argument("--backend", default="torch", help="torch[:bf16] or compile[:bf16]")
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of the first setting")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    loaded = resolve_model(None, args.preset)
    device = torch.device("cpu")
    spec = BackendSpec.parse(args.backend)
    net = make_torch_engine(spec, loaded, device)
    size = loaded.config.image_size
    rows = []
    for i, text in enumerate(args.settings):
        settings = parse_setting(text, args.cfg)
        bench = BenchSettings(settings, batch=args.batch, height=size, width=size, warmup=args.warmup if i == 0 else 0,
                              repeats=args.repeats)  # fmt: skip
        row = run_backend(spec, net, loaded, bench, settings, device)
        counts = sample_counts(settings)
        rows.append({"setting": text, "s_per_image": row.s_per_image, "backbone_calls": counts["backbone_calls"],
                     "evaluations": counts["paired_evals"] + counts["single_evals"]})  # fmt: skip
        base = rows[0]["s_per_image"]
        r = rows[-1]
        print(f"{text:>24}  {r['evaluations']:4d} evals  {r['backbone_calls']:4d} backbone  "
              f"{r['s_per_image']:8.2f} s/image  {base / r['s_per_image']:5.2f}x", flush=True)  # fmt: skip
    flags = sorted(set(re.findall(r"avx512[a-z_0-9]*|amx[a-z_0-9]*|avx2", Path("/proc/cpuinfo").read_text())))
    if args.json is not None:
        report = {"model": loaded.name, "backend": str(spec), "cfg": args.cfg, "batch": args.batch, "rows": rows,
                  "machine": {**machine_info(device), "cpu_flags": flags}}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
