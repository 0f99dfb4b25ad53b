"""Load test of `wanrt serve` on loopback: N jobs from C concurrent openai clients, two LoRAs interleaved, CPU
replicas; on one local Ray node or on a two-node local Ray cluster (ray.cluster_utils.Cluster).

Every job must end `completed` or be refused with 429 at submission (counted, not retried); an accepted job that
ends otherwise, or never ends, is `lost` and fails the run. Reports p50/p99 queue and run latency (server-side:
started - created, and time on the engine), throughput, and the RSS of the server's processes (the driver and every
Ray process it started) before and after.

    python tools/serve_load.py --mode local   -o docs/results/serve-load-local.json
    python tools/serve_load.py --mode cluster -o docs/results/serve-load-cluster.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LORAS = ("style-a", "sep")  # a merged engine and a separate-mode engine's own LoRA: two engines, no swap needed


def _env(root: Path) -> None:
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(root)})
    (root / "ray").mkdir(parents=True, exist_ok=True)


def build_bundle(work: Path) -> Path:
    """The tiny bundle the serve tests use: a merged export of one synthetic LoRA + a separate-mode export."""
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.lora import synthetic_lora
    from wanrt.export.lora_formats import save_lora_file
    from wanrt.export.model import ModelSpec, load_transformer
    from wanrt.export.onnx_export import ExportSpec
    from wanrt.runtime.serving.bundle import pack_bundle

    tiny = ModelSpec("tiny", layers=1)
    lora = save_lora_file(synthetic_lora(load_transformer(tiny), 4, "all", 11), work / "style-a.safetensors")
    export_model(tiny, LoraSpec(file=str(lora), mode="merged"), ExportSpec(validate=False), work / "a")
    export_model(tiny, LoraSpec(rank=4, mode="separate"), ExportSpec(validate=False), work / "sep")
    pack_bundle(work / "bundle", [("style-a", str(work / "a")), ("sep", str(work / "sep"))], [], name="wan-tiny")
    return work / "bundle"


def server_rss_mib() -> dict[str, float]:
    """RSS of this process and all its descendants (the Ray processes it started), MiB."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total, ray_total, pss = 0, 0, 0
    for p in procs:
        try:
            rss = p.memory_info().rss
            pss += p.memory_full_info().pss  # shared pages counted once across processes
        except psutil.Error:
            continue
        total += rss
        ray_total += rss if p.pid != me.pid else 0
    return {"rss_total_mib": round(total / 2**20, 1), "rss_ray_processes_mib": round(ray_total / 2**20, 1),
            "pss_total_mib": round(pss / 2**20, 1), "processes": len(procs)}


def start(mode: str, bundle: Path, store: Path, port: int, replicas: int, max_queue: int):
    import ray

    from wanrt.runtime.serving import ray_app
    from wanrt.runtime.serving.bundle import load_catalog
    from wanrt.runtime.serving.limits import Limits

    cluster = None
    if mode == "cluster":
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        info = ray_app.start_ray(cluster.address, "127.0.0.1", port)
        spec = ray_app.ReplicaSpec(min_replicas=2, max_replicas=2, num_cpus=1, threads=1, max_replicas_per_node=1)
    else:
        info = ray_app.start_ray(None, "127.0.0.1", port, num_cpus=2)
        spec = ray_app.ReplicaSpec(min_replicas=replicas, max_replicas=replicas, num_cpus=0, threads=1)
    app = ray_app.build_application(load_catalog(bundle), Limits(max_queue=max_queue), spec, str(store), 3600.0,
                                    None, poll_after_ms=100, graceful_shutdown_s=2.0)
    ray_app.run_application(app)
    info["nodes_ip"] = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})
    return cluster, spec, info


def run_clients(url: str, jobs: int, clients: int, png: bytes) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    lock, results = threading.Lock(), []
    counter = iter(range(jobs))

    def next_job():
        with lock:
            return next(counter, None)

    def loop():
        while (i := next_job()) is not None:
            lora = LORAS[i % 2]
            t0 = time.perf_counter()
            try:
                video = client.videos.create(prompt=f"load {i}", model="wan-tiny", size="32x32",
                                             input_reference=("in.png", png, "image/png"),
                                             extra_body={"lora": lora, "steps": 2, "seed": i, "frames": 5})
            except openai.RateLimitError as e:
                retry_after = e.response.headers.get("retry-after")
                results.append({"job": i, "lora": lora, "outcome": "refused_429", "retry_after": retry_after})
                time.sleep(min(float(retry_after or 1), 10.0))  # a polite client backs off before its next job
                continue
            try:
                video = client.videos.poll(video.id, poll_interval_ms=100)
            except Exception as e:  # noqa: BLE001 - anything here is a lost job, reported
                results.append({"job": i, "lora": lora, "outcome": "lost", "error": repr(e)})
                continue
            extra = video.model_extra.get("wanrt", {})
            results.append({"job": i, "lora": lora, "outcome": video.status, "id": video.id,
                            "error": video.error.message if video.error else None,
                            "queue_s": extra.get("queue_s"), "run_s": extra.get("run_s"),
                            "client_s": time.perf_counter() - t0, "replica": extra.get("replica")})

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(loop) for _ in range(clients)]:
            f.result()
    return results


def pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 4) if values else None


def summarize(results: list[dict], wall_s: float) -> dict:
    done = [r for r in results if r["outcome"] == "completed"]
    queue = [r["queue_s"] for r in done if r["queue_s"] is not None]
    run = [r["run_s"] for r in done if r["run_s"] is not None]
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    nodes: dict[str, int] = {}
    for r in done:
        key = f"{(r['replica'] or {}).get('node', '?')}/pid{(r['replica'] or {}).get('pid', '?')}"
        nodes[key] = nodes.get(key, 0) + 1
    return {"outcomes": outcomes, "lost": sum(1 for r in results if r["outcome"] not in ("completed", "refused_429")),
            "queue_s": {"p50": pct(queue, 50), "p99": pct(queue, 99), "max": max(queue) if queue else None},
            "run_s": {"p50": pct(run, 50), "p99": pct(run, 99), "max": max(run) if run else None},
            "client_s": {"p50": pct([r["client_s"] for r in done], 50),
                         "p99": pct([r["client_s"] for r in done], 99)},
            "throughput_jobs_per_s": round(len(done) / wall_s, 3), "wall_s": round(wall_s, 2),
            "jobs_per_replica": nodes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["local", "cluster"], default="local")
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=2, help="local mode: CPU replicas on the one node")
    ap.add_argument("--max-queue", type=int, default=4,
                    help="the server's queue bound (small, so the 429 path is exercised under 8 clients)")
    ap.add_argument("--bundle", type=Path, default=None, help="default: build the tiny test bundle")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    work = Path(tempfile.mkdtemp(prefix="wanrt-load-"))
    ray_root = Path(tempfile.mkdtemp(prefix="wl", dir="/tmp"))  # short (socket paths), and ours to remove
    _env(ray_root)
    import psutil

    from wanrt.artifacts import command_line, library_versions, machine_info, write_json
    from wanrt.runtime.serving import ray_app

    before_children = {p.pid for p in psutil.Process().children(recursive=True)}
    cluster = None
    try:
        bundle = args.bundle or build_bundle(work)
        from wanrt.runtime.bench import bench_image

        import io

        buf = io.BytesIO()
        bench_image(32, 32, 0).save(buf, format="PNG")
        port = _free_port()
        t_start = time.perf_counter()
        cluster, spec, info = start(args.mode, bundle, work / "store", port, args.replicas, args.max_queue)
        startup_s = time.perf_counter() - t_start
        url = f"http://127.0.0.1:{port}"
        run_clients(url, 4, 2, buf.getvalue())  # warm-up (pipelines built per seed/engine), excluded
        rss_before = server_rss_mib()
        t0 = time.perf_counter()
        results = run_clients(url, args.jobs, args.clients, buf.getvalue())
        wall = time.perf_counter() - t0
        rss_after = server_rss_mib()
        summary = summarize(results, wall)
        out = {"tool": "tools/serve_load.py", "command": command_line(), "mode": args.mode,
               "machine": machine_info(), "versions": {**library_versions(), "ray": info["ray"]},
               "setup": {"jobs": args.jobs, "clients": args.clients, "loras": list(LORAS),
                         "replicas": {"min": spec.min_replicas, "max": spec.max_replicas, "num_cpus": spec.num_cpus,
                                      "threads": spec.threads, "max_per_node": spec.max_replicas_per_node},
                         "max_queue": args.max_queue, "job": "tiny (1 block), 5x32x32, 2 steps, CFG",
                         "nodes": info["nodes"], "node_ips": info["nodes_ip"], "startup_s": round(startup_s, 1)},
               "summary": summary, "server_rss": {"before": rss_before, "after": rss_after},
               "note": "2 shared CPU cores, other engineers' jobs running on the same machine during the run: "
                       "latencies and throughput are noisy (not a quiet-machine figure); counts (completed / 429 / "
                       "lost) are exact.",
               "results": results}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, out)
        print(json.dumps({k: out[k] for k in ("mode", "summary", "server_rss")}, indent=1))
        return 0 if summary["lost"] == 0 else 1
    finally:
        try:
            ray_app.shutdown()
        finally:
            if cluster is not None:
                cluster.shutdown()
            for p in psutil.Process().children(recursive=True):
                if p.pid not in before_children:
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(ray_root, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
