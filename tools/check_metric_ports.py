"""How closely the PyTorch I3D and LPIPS ports reproduce the reference flax models (the figures in docs/metrics.md).

Same inputs and references as tests/test_metrics_networks.py (tests/data/metric_references.npz, made by
tools/make_metric_references.py); needs `wanrt weights fetch`. Writes docs/results/metric-ports-cpu.json.

    python -m wanrt.tools.check_metric_ports
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/metric-ports-cpu.json")
    args = ap.parse_args()
    from wanrt.artifacts import command_line, library_versions, machine_info, write_json
    from wanrt.runtime.metrics import lpips
    from wanrt.runtime.metrics.i3d import load_i3d
    from wanrt.tools.make_metric_references import i3d_reference_clips, lpips_reference_pairs, to_unit_range

    refs = dict(np.load(DATA / "metric_references.npz"))
    clips = torch.from_numpy(to_unit_range(i3d_reference_clips())).permute(0, 4, 1, 2, 3)
    with torch.inference_mode():
        logits = load_i3d()(clips).numpy()
    ref = refs["i3d_logits"]
    results = {"i3d_logits": {"inputs": "2 clips 16x224x224", "max_abs_diff": float(np.abs(logits - ref).max()),
                              "max_abs_reference": float(np.abs(ref).max()),
                              "relative_to_max": float(np.abs(logits - ref).max() / np.abs(ref).max()),
                              "argmax_equal": bool((logits.argmax(1) == ref.argmax(1)).all())}}
    for net in ("alex", "vgg"):
        ours = np.array([lpips.lpips_distance(torch.from_numpy(to_unit_range(a)).permute(2, 0, 1)[None],
                                              torch.from_numpy(to_unit_range(b)).permute(2, 0, 1)[None],
                                              net=net).item() for a, b in lpips_reference_pairs()])
        results[f"lpips_{net}"] = {"inputs": f"{len(ours)} image pairs",
                                   "max_abs_diff": float(np.abs(ours - refs[f"lpips_{net}"]).max()),
                                   "values": ours.tolist(), "reference": refs[f"lpips_{net}"].tolist()}
    doc = {"command": command_line(),
           "machine": machine_info(), "versions": library_versions(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, doc)
    for k, v in results.items():
        print(f"{k:12s} max abs diff {v['max_abs_diff']:.3g}" + (f" ({v['relative_to_max']:.3g} of max)"
                                                                  if "relative_to_max" in v else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
