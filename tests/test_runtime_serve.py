"""`wanrt serve` on 127.0.0.1 with an ephemeral port: health, predict, generate, bounded bad requests."""

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from wanrt.export.api import LoraSpec
from wanrt.export.model import ModelSpec
from wanrt.runtime.serve import load_state, make_server

LORA = LoraSpec(rank=4, targets="all", mode="separate", seed=0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "wanrt-cache"


def _serve(state):
    server = make_server(state, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def ort_server(cache_dir):
    from wanrt.runtime.backends import backend_from_specs

    onnx_dir = backend_from_specs("ort", ModelSpec("tiny"), LORA, cache_dir=cache_dir).artifact
    state = load_state("ort", str(onnx_dir), None, None, max_body=1 << 20, max_frames=9, max_steps=3)
    server, url = _serve(state)
    yield url, onnx_dir
    server.shutdown()
    server.server_close()


def _call(url, body=None, method=None, raw=None, timeout=60):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return base64.b64encode(buf.getvalue()).decode()


def test_healthz_reports_manifest_identity(ort_server):
    url, onnx_dir = ort_server
    status, ctype, body = _call(url + "/healthz")
    info = json.loads(body)
    assert status == 200 and ctype == "application/json" and info["status"] == "ok"
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert info["identity"]["kind"] == "onnx" and info["identity"]["sha256"] == manifest["payload"]["sha256"]
    assert info["identity"]["specs"]["lora"]["mode"] == "separate" and info["backend"]["backend"] == "ort"


def test_predict_stats_and_npy(ort_server):
    url, _ = ort_server
    status, _, body = _call(url + "/v1/predict", {"frames": 5, "height": 32, "width": 32, "seed": 1})
    stats = json.loads(body)
    assert status == 200 and stats["shape"] == [1, 16, 2, 4, 4] and stats["finite"] and stats["latency_ms"] > 0
    g = np.random.default_rng(0)
    inputs = {"latents": g.standard_normal((2, 36, 2, 4, 4), dtype=np.float32),
              "timestep": np.array([900.0, 20.0], np.float32),
              "text": g.standard_normal((2, 512, 32), dtype=np.float32),
              "image": g.standard_normal((2, 257, 16), dtype=np.float32)}
    status, ctype, body = _call(url + "/v1/predict", {"format": "npy",
                                                     "inputs": {k: _npy(v) for k, v in inputs.items()}})
    assert status == 200 and ctype == "application/octet-stream"
    pred = np.load(io.BytesIO(body))
    from wanrt.runtime.backends import backend_from_specs
    import torch

    ref = backend_from_specs("eager", ModelSpec("tiny"), LORA)(*(torch.from_numpy(inputs[k]) for k in
                                                                   ("latents", "timestep", "text", "image")))
    assert pred.shape == (2, 16, 2, 4, 4)
    assert np.linalg.norm(pred - ref.numpy()) / np.linalg.norm(ref.numpy()) < 1e-4


def test_generate_returns_mp4(ort_server, tmp_path):
    url, _ = ort_server
    status, ctype, body = _call(url + "/v1/generate", {"prompt": "a cat", "frames": 5, "height": 32, "width": 32,
                                                      "steps": 1, "seed": 2}, timeout=120)
    assert status == 200 and ctype == "video/mp4" and body[4:8] == b"ftyp"
    (tmp_path / "v.mp4").write_bytes(body)
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "v.mp4").shape == (5, 32, 32, 3)


@pytest.mark.parametrize("path,body,code,needle", [
    ("/v1/predict", {"frames": 6}, 400, "4k+1"),
    ("/v1/predict", {"frames": 33}, 400, "limit"),  # over --max-frames
    ("/v1/predict", {"height": 512}, 400, "outside the artifact's range"),
    ("/v1/predict", {"batch": 3}, 400, "batch"),
    ("/v1/predict", {"inputs": {"latents": "bm90IG5weQ=="}}, 400, "npy"),
    ("/v1/predict", {"inputs": {"weights": ""}}, 400, "unknown inputs"),
    ("/v1/generate", {"prompt": ""}, 400, "prompt"),
    ("/v1/generate", {"prompt": "x", "steps": 99}, 400, "steps"),
    ("/v1/train", {}, 404, "not found"),
])
def test_bad_requests_are_bounded(ort_server, path, body, code, needle):
    url, _ = ort_server
    status, ctype, raw = _call(url + path, body)
    assert status == code and ctype == "application/json"
    assert needle in json.loads(raw)["error"]


def test_oversized_and_malformed_bodies(ort_server):
    url, _ = ort_server
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/predict")  # announce a body over the limit; the server answers before reading it
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str((1 << 20) + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds" in json.loads(resp.read())["error"]
    conn.close()
    status, _, raw = _call(url + "/v1/predict", raw=b"{not json")
    assert status == 400 and "invalid JSON" in json.loads(raw)["error"]
    status, _, _ = _call(url + "/v1/predict", method="GET")
    assert status == 405


def test_eager_preset_and_manifest_checks(tmp_path):
    from wanrt.errors import BadInputError

    state = load_state("eager", None, ModelSpec("tiny"), LoraSpec())
    server, url = _serve(state)
    try:
        info = json.loads(_call(url + "/healthz")[2])
        assert info["identity"]["kind"] == "eager" and info["identity"]["specs"]["model"]["source"] == "tiny"
        assert _call(url + "/v1/predict", {"seed": 0})[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(BadInputError, match="manifest"):
        load_state("ort", str(tmp_path), None, None)
    with pytest.raises(BadInputError, match="--engine"):
        load_state("ort", None, ModelSpec("tiny"), LoraSpec())
