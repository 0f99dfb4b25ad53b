"""`wanrt serve`, `wanrt pack`, `wanrt verify`."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import click

from wanrt.console import err_console, out_console
from wanrt.engines import registry
from wanrt.errors import BadInputError
from wanrt.commands.flags import deprecated_option
from wanrt.commands.options import FiniteFloat  # FloatRange takes nan and inf

# backends that run an ONNX export (ORT, and the flavours that compile one on load), and those that need a built engine
EXPORT_BACKENDS = ("ort", *registry.export_backends())
ENGINE_ONLY = tuple(b for b in registry.backends() if b not in EXPORT_BACKENDS)


def _pairs(values: tuple[str, ...], flag: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise BadInputError(f"{flag} {v!r}: expected NAME=PATH")
        out.append((name, path))
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ pack / verify
@click.command()
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="The bundle directory.")
@click.option("--artifact", "engines", multiple=True, metavar="NAME=DIR",
              help="An export or engine directory. NAME is the LoRA a merged engine serves (e.g. 'base' for none); "
                   "a separate-mode engine serves the whole library; a Wan2.2 experts artifact is one engine "
                   "(both experts, a stack per expert). Repeat for more.  [required]")
# a directory of an export or an engine is --artifact in every subcommand (--engine: export's build switch)
@deprecated_option("--engine", "--artifact", "engines", multiple=True, metavar="NAME=DIR")
@click.option("--lora", "loras", multiple=True, metavar="NAME=FILE",
              help="A LoRA (safetensors) for the library that separate-mode engines swap in, alone or stacked; "
                   "each must fit some engine's branch. Repeat for more.")
@click.option("--name", default=None, help="The bundle's model name (clients pass it as `model`; default: the "
                                           "directory name).")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
def pack(output, engines, loras, name, force):
    """Pack prebuilt engines and a LoRA library into a bundle with the sha256 of every file."""
    from wanrt.runtime.serving.bundle import pack_bundle

    if not engines:
        raise BadInputError("pack needs at least one --artifact NAME=DIR (an export or engine directory)")
    manifest = pack_bundle(output, _pairs(engines, "--artifact"), _pairs(loras, "--lora"), name=name, force=force,
                           say=lambda m: err_console.print(f"[dim]{m}[/dim]"))
    out_console.print(f"wrote bundle {output} ('{manifest.name}'): {len(manifest.engines)} engine(s), "
                      f"{len(manifest.loras)} LoRA(s), {len(manifest.files)} files, "
                      f"{sum(manifest.sizes.values()) / 2**20:.1f} MiB")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--no-hashes", is_flag=True, help="Check paths and runtime only (skip re-hashing every file).")
def verify(bundle, no_hashes):
    """Check a bundle: every file's sha256, paths confined to it, and that this machine can run its engines."""
    from rich.table import Table
    from wanrt.runtime.serving.bundle import verify_bundle

    report = verify_bundle(bundle, hashes=not no_hashes)
    table = Table(title=f"{bundle}: {report['files']} files, {report['bytes'] / 2**20:.1f} MiB, LoRAs: "
                        f"{', '.join(report['loras']) or 'none'}")
    for col in ("engine", "backend", "LoRA mode", "rank", "runs here"):
        table.add_column(col)
    for e in report["engines"]:
        table.add_row(str(e["name"]), str(e.get("backend")), str(e.get("lora_mode") or "-"), str(e.get("rank") or "-"),
                      "yes" if e["runtime"] is None else f"[red]no: {e['runtime']}[/red]")
    out_console.print(table)
    problems = report["problems"]
    if problems:
        shown = 20  # a bundle of 100k added files must not print 100k lines
        for p in problems[1:shown]:
            err_console.print(p, style="red", markup=False, highlight=False)  # a file name may hold [brackets]
        if len(problems) > shown:
            err_console.print(f"[red]... and {len(problems) - shown} more[/red]")
        raise BadInputError(f"{bundle}: {problems[0]}" + (f" ({len(problems)} problems)" if len(problems) > 1 else ""))
    out_console.print("ok: paths confined, sizes match; hashes not checked (--no-hashes)" if no_hashes
                      else "ok: hashes match, paths confined")


# ------------------------------------------------------------------------------------------------ serve
@click.command()
@click.argument("source", required=False, type=click.Path(file_okay=False, exists=True))
# the README's old spelling (`serve --engine DIR`): the directory is the SOURCE argument now
@deprecated_option("--engine", "serve DIR", "source", type=click.Path(file_okay=False, exists=True))
@click.option("--backend", type=click.Choice(["auto", *EXPORT_BACKENDS, *ENGINE_ONLY, "eager"]), default="auto",
              show_default=True, help="auto: what each engine was built for (ONNX -> ort). "
              + ", ".join(f"'{b}'" for b in EXPORT_BACKENDS[1:]) + " also run ONNX exports; 'eager' serves --model "
              "without a bundle.")
@click.option("--model", default="tiny", show_default=True, help="Preset served by --backend eager.")
@click.option("--pipeline", default=None, help="diffusers Wan I2V pipeline (VAE/encoders); default: tiny built-in.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (beyond loopback needs --token).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token", envvar="WANRT_API_TOKEN", default=None, help="Bearer token clients must send "
                                                                       "[env WANRT_API_TOKEN].")
@click.option("--address", default=None, help="Join this Ray cluster (e.g. auto, or HEAD_IP:6379) instead of "
                                              "starting a local one.")
@click.option("--no-ray", is_flag=True, help="One process, one in-process engine (debugging; no scale-out).")
@click.option("--replicas", type=click.IntRange(1), default=None,
              help="Engine replicas (default: 1 on CPU, one per GPU for TensorRT).")
@click.option("--min-replicas", type=click.IntRange(0), default=None, help="Autoscaling lower bound.")
@click.option("--max-replicas", type=click.IntRange(1), default=None, help="Autoscaling upper bound.")
@click.option("--replica-cpus", type=FiniteFloat(0), default=1.0, show_default=True,
              help="CPUs Ray reserves per CPU replica (0 lets replicas share a small machine).")
@click.option("--max-replicas-per-node", type=click.IntRange(1), default=None)
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads per replica (torch/ORT/OpenVINO).")
@click.option("--store", type=click.Path(file_okay=False), default=None,
              help="Job store (SQLite + files) [default: $WANRT_CACHE_DIR/serve/jobs].")
@click.option("--ttl-hours", type=FiniteFloat(min=0.001), default=24.0, show_default=True,
              help="Ended jobs and their videos are deleted after this.")
@click.option("--max-queue", type=click.IntRange(1), default=64, show_default=True,
              help="Queued jobs before 429 + Retry-After.")
@click.option("--max-stack", type=click.IntRange(1), default=8, show_default=True,
              help="LoRAs one request may stack (`loras`).")
@click.option("--max-body-mb", type=FiniteFloat(0.01), default=16.0, show_default=True)
@click.option("--max-frames", type=click.IntRange(1), default=81, show_default=True)
@click.option("--max-pixels", type=click.IntRange(256), default=1280 * 720, show_default=True,
              help="Cap on height x width (on top of the engine profile; the only bound for eager).")
@click.option("--max-steps", type=click.IntRange(1), default=50, show_default=True)
@click.option("--job-timeout", type=FiniteFloat(1), default=3600.0, show_default=True, help="Seconds per job.")
@click.option("--no-verify", is_flag=True, help="Skip the bundle's sha256 check at start-up.")
def serve(**kw):
    """Serve a bundle (or one export/engine directory) on Ray Serve: the OpenAI-compatible /v1/videos job API.

    Starts a local Ray on 127.0.0.1 unless --address joins a cluster. Jobs are durable in --store: a restart
    finishes every accepted job. Ctrl-C stops.
    """
    from wanrt.runtime.serving.limits import Limits

    if not _is_loopback(kw["host"]) and not kw["token"]:
        raise BadInputError(f"--host {kw['host']} is beyond loopback: set --token (or WANRT_API_TOKEN) so the API "
                            "is not open to the network")
    _replica_bounds(kw, default=1)  # the flags alone contradict each other: one line before any work
    catalog = _catalog(kw)
    mb = int(kw["max_body_mb"] * 2**20)
    limits = Limits(max_body_bytes=mb, max_image_bytes=min(mb, Limits.max_image_bytes), max_frames=kw["max_frames"],
                    max_pixels=kw["max_pixels"], max_steps=kw["max_steps"], max_queue=kw["max_queue"],
                    job_timeout_s=kw["job_timeout"], max_stack=kw["max_stack"])
    store = Path(kw["store"]) if kw["store"] else _default_store()
    if kw["no_ray"]:
        return _serve_in_process(kw, catalog, limits, store)
    _serve_on_ray(kw, catalog, limits, store)


def _default_store() -> Path:
    from wanrt.artifacts import cache_root

    return cache_root("serve") / "jobs"


def _catalog(kw):
    from wanrt.runtime.serving.bundle import load_catalog
    from wanrt.runtime.serving.catalog import eager_catalog

    if kw["backend"] == "eager":
        from wanrt.export.presets import PRESETS

        if kw["source"]:
            raise BadInputError("--backend eager serves --model, not a bundle; drop SOURCE or the --backend")
        if kw["model"] not in PRESETS:
            raise BadInputError(f"--model {kw['model']!r}: eager serving takes a preset ({', '.join(PRESETS)})")
        catalog = eager_catalog(kw["model"], PRESETS[kw["model"]].config)
        catalog.pipeline = kw["pipeline"]
        return catalog
    if not kw["source"]:
        raise BadInputError("serve needs a bundle (wanrt pack) or an export/engine directory, or --backend eager")
    catalog = load_catalog(kw["source"], verify=not kw["no_verify"], pipeline=kw["pipeline"])
    if kw["backend"] in EXPORT_BACKENDS:
        engines = []
        for e in catalog.engines:
            if e.backend not in EXPORT_BACKENDS:
                raise BadInputError(f"--backend {kw['backend']}: engine '{e.name}' is a {e.backend} engine")
            engines.append(replace(e, backend=kw["backend"]))
        catalog.engines = engines
    elif kw["backend"] in ENGINE_ONLY and any(e.backend != kw["backend"] for e in catalog.engines):
        label = registry.for_backend(kw["backend"]).label
        raise BadInputError(f"--backend {kw['backend']}: the bundle holds engines that are not {label} engines")
    return catalog


def _replica_bounds(kw, default: int) -> tuple[int, int]:
    """(min, max) engine replicas from the flags; `default` stands for what the cluster decides (one per GPU)."""
    n = kw["replicas"] or default
    lo = kw["min_replicas"] if kw["min_replicas"] is not None else n
    hi = kw["max_replicas"] or max(n, lo)
    if lo > hi:
        what = "--min-replicas" if kw["min_replicas"] is not None else "--replicas"
        raise BadInputError(f"{what} {lo} is above --max-replicas {hi}")
    return lo, hi


def _replica_spec(kw, catalog):
    from wanrt.runtime.serving.ray_app import ReplicaSpec

    gpu = any(getattr(registry.for_backend(e.backend), "runtime_device", "cpu") == "cuda" for e in catalog.engines)
    if gpu:
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < 1:
            raise BadInputError("the bundle holds TensorRT engines but the Ray cluster has no GPU")
        default = gpus  # one replica per GPU
    else:
        default = 1
    lo, hi = _replica_bounds(kw, default)
    return ReplicaSpec(min_replicas=lo, max_replicas=hi, num_cpus=0 if gpu else kw["replica_cpus"],
                       num_gpus=1 if gpu else 0, threads=kw["threads"],
                       max_replicas_per_node=kw["max_replicas_per_node"], device="cuda" if gpu else "cpu")


class _Stop:
    """SIGINT/SIGTERM set `event` and remember which came first; `exit()` then leaves the way the README's exit
    table says (130 / 143) after the caller has shut everything down.

    Installed before Ray starts, so a signal during start-up (or SIGINT to a background process, which starts with
    SIGINT ignored) still stops the server cleanly, and again right after `ray.init`: Ray replaces SIGTERM's
    handler with its own (a C++ stack dump, then `sys.exit(15)` in the middle of whatever the driver was doing,
    which left Serve's replicas and Ray's agents running and sometimes aborted: exit 134)."""

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None
        self.install()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()  # a second signal during the shutdown changes nothing: it is already under way

    def exit(self) -> None:
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the CLI's one line and 130
        if self.signum == signal.SIGTERM:
            err_console.print("stopped (SIGTERM)")
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die of it, as every wanrt command does: the shell's 143
            os.kill(os.getpid(), signal.SIGTERM)


def _serve_on_ray(kw, catalog, limits, store: Path) -> None:
    from wanrt.runtime.serving import ray_app
    from wanrt.runtime.serving.job_store import JobStore

    JobStore(store).close()  # in use by another server? one line now, not a replica failing inside Ray later
    stop = _Stop()
    try:
        info = ray_app.start_ray(kw["address"], kw["host"], kw["port"], quiet=False, limits=limits,
                                 after_init=stop.install)
        replicas = _replica_spec(kw, catalog)
        app = ray_app.build_application(catalog, limits, replicas, str(store.resolve()), kw["ttl_hours"] * 3600,
                                        kw["token"], verify=False)
        if not stop.event.is_set():
            ray_app.run_application(app)
            err_console.print(f"serving '{catalog.model}' on http://{kw['host']}:{kw['port']}/v1/videos (Ray "
                              f"{info['ray']}, {info['nodes']} node(s), {replicas.min_replicas}-"
                              f"{replicas.max_replicas} engine replica(s)); store {store}; Ctrl-C stops")
        while not stop.event.wait(1.0):
            pass
    finally:
        ray_app.shutdown(stop_ray=kw["address"] is None)
    stop.exit()


def _serve_in_process(kw, catalog, limits, store: Path) -> None:
    import uvicorn
    from wanrt.runtime.serving.app import Service, build_app
    from wanrt.runtime.serving.front import Front, free_loopback_port
    from wanrt.runtime.serving.scheduler import Scheduler
    from wanrt.runtime.serving.job_store import JobStore
    from wanrt.runtime.serving.worker import LocalEngine, VideoWorker

    # the same bounded front as under Ray: uvicorn's parsers take any head size and time, like Ray's proxy. Bound
    # first: a port in use is one line before any work (requests meanwhile get 503 server_starting)
    front = Front(kw["host"], kw["port"], free_loopback_port(), limits)
    front.start()
    try:
        worker = VideoWorker(catalog, threads=kw["threads"], verify=False)
        for engine in catalog.engines[:1]:
            worker.backend(engine)
        scheduler = Scheduler(JobStore(store, ttl_s=kw["ttl_hours"] * 3600), LocalEngine(worker), limits)
        app = build_app(Service(catalog, limits, scheduler, token=kw["token"]))
        err_console.print(f"serving '{catalog.model}' on http://{kw['host']}:{kw['port']}/v1/videos (one process, "
                          f"no Ray); store {store}; Ctrl-C stops")
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        # uvicorn stops on SIGINT/SIGTERM and then raises the signal again: 130 / 143 as the README says
        uvicorn.run(app, host="127.0.0.1", port=front.upstream_port, log_level="warning",
                    timeout_keep_alive=limits.keep_alive_s, backlog=2048, timeout_graceful_shutdown=5)
    finally:
        front.stop()
