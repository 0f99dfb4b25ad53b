"""`wanrt serve` on Ray Serve (one local Ray session for the module, every address on 127.0.0.1): the official
openai client against the tiny bundle, the mp4 equal to `wanrt generate`'s, LoRA routing and swap, predict parity,
cancel of a running job on a replica."""

import base64
import io
import json
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.serve_helpers import openai_client, free_port, png_bytes, set_ray_env, wait_for

set_ray_env()  # before Ray is imported (it reads its address settings at import)
warnings.filterwarnings("ignore", category=DeprecationWarning)

SETTINGS = {"steps": 2, "seed": 3, "frames": 5}


def _ray_children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def kill_leftovers(before: set[int], ray_dir, cluster=None) -> None:
    """Stop Ray without Serve's graceful drain (seconds; the tests are done with it), then end by pid the Ray
    processes this test started that outlived ray.shutdown (agents), and remove set_ray_env's folder."""
    import shutil

    import psutil
    import ray

    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()

    for pid in _ray_children() - before:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    shutil.rmtree(ray_dir, ignore_errors=True)


def test_the_ray_root_is_never_one_the_user_named(tmp_path, monkeypatch):
    """The fixtures delete what set_ray_env returns: it must be a folder this process made, whatever RAY_TMPDIR says
    ("" once meant the working directory, and a checkout went with it)."""
    (tmp_path / "keep").write_text("the user's")
    for given in ("", str(tmp_path)):
        monkeypatch.setenv("RAY_TMPDIR", given)
        ray_dir = set_ray_env()
        assert ray_dir.name == "ray" and ray_dir.parent.name.startswith("wrt") and ray_dir.parent.parent == Path("/tmp")
        assert tmp_path not in ray_dir.parents and Path.cwd() not in ray_dir.parents


@pytest.fixture(scope="module")
def ray_server(serve_artifacts, tmp_path_factory):
    from wanrt.runtime.serving import ray_app
    from wanrt.runtime.serving.bundle import load_catalog
    from wanrt.runtime.serving.limits import Limits

    before, ray_dir = _ray_children(), set_ray_env()
    port = free_port()
    try:  # a failed start too stops Ray: the next module's fixture must not find this one running
        ray_app.start_ray(None, "127.0.0.1", port, num_cpus=2)
        catalog = load_catalog(serve_artifacts["bundle"])
        store = tmp_path_factory.mktemp("ray-store")
        app = ray_app.build_application(catalog, Limits(max_steps=990), ray_app.ReplicaSpec(num_cpus=0, threads=1),
                                        str(store), 3600.0, None, poll_after_ms=200, graceful_shutdown_s=2.0)
        ray_app.run_application(app)
        yield {"url": f"http://127.0.0.1:{port}", "artifacts": serve_artifacts}
    finally:
        kill_leftovers(before, ray_dir)


def _engine_describe():
    from ray import serve

    return serve.get_deployment_handle("engine", app_name="wanrt").describe.remote().result()


def test_openai_client_mp4_equals_wanrt_generate(ray_server, tmp_path):
    from wanrt.runtime.generate import GenerateSpec, generate
    from wanrt.runtime.schedule import Schedule

    url, art = ray_server["url"], ray_server["artifacts"]
    client = openai_client(url)
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes())
    video = client.videos.create_and_poll(prompt="a cat", model="wan-tiny", size="32x32",
                                          input_reference=("in.png", image.read_bytes(), "image/png"),
                                          extra_body={"lora": "style-a", **SETTINGS})
    assert video.status == "completed" and video.progress == 100 and video.size == "32x32"
    served = client.videos.download_content(video.id, variant="video").read()
    # the same job through `wanrt generate`'s function: same engine, image, seed, steps, tiny pipeline
    spec = GenerateSpec(prompt="a cat", frames=5, height=32, width=32, schedule=Schedule(steps=2, guidance=5.0),
                        seed=3)
    generate(image, spec, "ort", tmp_path / "ref.mp4", engine=str(art["merged_a"]))
    assert served == (tmp_path / "ref.mp4").read_bytes()

    assert video.id in [v.id for v in client.videos.list(limit=10).data]
    assert client.videos.delete(video.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.videos.create(prompt="x", model="wan-tiny", input_reference=("in.png", png_bytes(), "image/png"),
                             extra_body={"lora": "unknown"})
    assert e.value.body["code"] == "lora_not_found"
    with pytest.raises(openai.BadRequestError) as e:  # outside the engine's profile (tiny export: 16..128 px)
        client.videos.create(prompt="x", model="wan-tiny", size="832x480",
                             input_reference=("in.png", png_bytes(), "image/png"), extra_body={"lora": "style-a"})
    assert e.value.body["param"] == "size" and e.value.body["code"] == "outside_engine_profile"


def _predict(url, body):
    req = urllib.request.Request(url + "/v1/predict", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return np.load(io.BytesIO(r.read()))


def _inputs():
    g = np.random.default_rng(0)
    return {"latents": g.standard_normal((2, 36, 2, 4, 4), dtype=np.float32),
            "timestep": np.array([900.0, 20.0], np.float32),
            "text": g.standard_normal((2, 512, 32), dtype=np.float32),
            "image": g.standard_normal((2, 257, 16), dtype=np.float32)}


def _eager(lora_spec, inputs):
    import torch

    from tests.serve_helpers import _tiny
    from wanrt.runtime.backends import backend_from_specs

    backend = backend_from_specs("eager", _tiny(), lora_spec)
    return backend(*(torch.from_numpy(inputs[k]) for k in ("latents", "timestep", "text", "image"))).numpy()


def _b64(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return base64.b64encode(buf.getvalue()).decode()


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_predict_routes_each_lora_to_its_engine(ray_server):
    from wanrt.export.api import LoraSpec

    url, art = ray_server["url"], ray_server["artifacts"]
    loras = json.loads(urllib.request.urlopen(url + "/v1/loras", timeout=10).read())["data"]
    assert {(x["id"], x["engine"], x["served_as"]) for x in loras} == {
        ("style-a", "style-a", "merged"), ("sep", "sep", "swap"), ("style-b", "sep", "swap")}
    inputs = _inputs()
    body = {"format": "npy", "inputs": {k: _b64(v) for k, v in inputs.items()}}
    merged = _predict(url, {**body, "lora": "style-a"})
    assert _rel(merged, _eager(LoraSpec(file=str(art["lora_a"]), mode="merged"), inputs)) < 1e-4
    own = _predict(url, {**body, "lora": "sep"})  # the separate engine's own exported LoRA
    assert _rel(own, _eager(LoraSpec(rank=4, mode="separate", seed=0), inputs)) < 1e-4


def test_lora_swap_on_a_separate_engine(ray_server):
    from wanrt.export.api import LoraSpec
    url, art = ray_server["url"], ray_server["artifacts"]
    inputs = _inputs()
    body = {"format": "npy", "inputs": {k: _b64(v) for k, v in inputs.items()}}
    swapped = _predict(url, {**body, "lora": "style-b"})  # library LoRA -> swapped into `sep`
    assert _rel(swapped, _eager(LoraSpec(file=str(art["lora_b"]), mode="separate"), inputs)) < 1e-4
    base = _predict(url, body)  # no LoRA -> `sep` with its branch zeroed
    assert _rel(base, _eager(None, inputs)) < 1e-4
    own = _predict(url, {**body, "lora": "sep"})  # and back, exactly
    assert _rel(own, _eager(LoraSpec(rank=4, mode="separate", seed=0), inputs)) < 1e-4
    assert _engine_describe()["swaps"] >= 3


def test_cancel_running_job_on_a_replica(ray_server):
    url = ray_server["url"]
    client = openai_client(url)
    # the replica takes one request at a time, so describe() waits behind a running job: read it before and after
    before = _engine_describe()["forwards"]
    job = client.videos.create(prompt="a long one", model="wan-tiny", size="128x128",
                               input_reference=("in.png", png_bytes(), "image/png"),
                               # 1980 DiT calls, several seconds at the profile's largest shape (17x128x128):
                               # long beside the cancel's path even on a loaded machine. Shift 1 keeps UniPC's 990
                               # integer timesteps distinct (at the tiny pipeline's shift 3 they repeat from 334)
                               extra_body={"lora": "style-a", "frames": 17, "steps": 990, "shift": 1.0})
    wait_for(lambda: client.videos.retrieve(job.id).model_extra["wanrt"]["step"] >= 1, timeout=120)
    assert client.videos.delete(job.id).deleted
    wait_for(lambda: not _engine_describe()["busy"], timeout=30, every=0.2)
    # stopped soon after DELETE (the cancel crosses the ingress, Ray and a thread: a few dozen calls), not after 1980
    assert _engine_describe()["forwards"] - before < 990
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(job.id)
    health = json.loads(urllib.request.urlopen(url + "/healthz", timeout=10).read())
    assert health["status"] == "ok" and health["running"] == 0
    metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    assert 'wanrt_jobs_total{outcome="cancelled"} 1' in metrics and "wanrt_job_queue_seconds_count" in metrics
