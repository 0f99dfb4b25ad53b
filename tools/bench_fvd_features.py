"""Measure FVD feature-extraction throughput: I3D clips/s for 16x224x224 clips on this machine.

    python -m wanrt.tools.bench_fvd_features [--clips 8] [--batch-size 4] [--threads N] [--warmup 1]
                                              [--source-size 480x832] [--json OUT]

Times `frechet.i3d_features` end to end (uint8 frames -> resize to 224 -> I3D -> 400-d features) on synthetic
uint8 videos, after warm-up batches, and prints the machine, library versions, the command and the load average
(other processes on a small machine move the numbers; the load is recorded with them).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8, help="clips timed (after warm-up)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    ap.add_argument("--source-size", default="224x224", help="HxW of the synthetic frames (resized to 224x224)")
    ap.add_argument("--json", dest="json_out", help="also write the result here")
    args = ap.parse_args()

    import torch

    from wanrt.artifacts import command_line, library_versions, machine_info
    from wanrt.runtime.metrics import frechet
    from wanrt.runtime.metrics.i3d import load_i3d

    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.source_size.lower().split("x"))
    rs = np.random.RandomState(0)
    config = frechet.FVDConfig(batch_size=args.batch_size)
    model = load_i3d()

    def videos(n):
        return (rs.randint(0, 256, size=(16, h, w, 3), dtype=np.uint8) for _ in range(n))

    frechet.i3d_features(videos(args.warmup * args.batch_size), config, model=model)
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    feats, _ = frechet.i3d_features(videos(args.clips), config, model=model)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    result = {
        "clips_per_s": args.clips / wall,
        "s_per_clip": wall / args.clips,
        "process_cpu_s_per_clip": cpu / args.clips,
        "clips": int(feats.shape[0]),
        "clip_shape": [16, h, w, 3],
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "command": command_line(),
        "machine": machine_info(),
        "versions": library_versions(),
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
