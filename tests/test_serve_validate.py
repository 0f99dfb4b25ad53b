"""The serve layers that need no engine: request validation, the job store (recovery, TTL), bundle pack/verify."""

import base64
import io
import json
import time

import numpy as np
import pytest

from wanrt.errors import BadInputError
from wanrt.runtime.serving.catalog import Catalog, EngineInfo
from wanrt.runtime.serving.limits import ApiError, Limits
from wanrt.runtime.serving.job_store import JobStore
from wanrt.runtime.schedule import Schedule
from wanrt.runtime.serving.requests import (VideoRequest, check_image, parse_json_object, parse_predict_request,
                                            parse_video_request)

from tests.serve_helpers import png_bytes

GEOMETRY = {"in_channels": 36, "text_dim": 32, "image_dim": 16}
RANGE = {"F": (1, 5), "H": (2, 16), "W": (2, 16)}  # tiny's export: 1..17 frames, 16..128 px


def _catalog():
    merged = EngineInfo("style-a", "/x", "ort", "style-a", "merged", 4, 1.0, RANGE, GEOMETRY, (5, 32, 32), "tiny")
    sep = EngineInfo("sep", "/y", "ort", None, "separate", 4, 1.0, RANGE, GEOMETRY, (5, 32, 32), "tiny")
    eager = EngineInfo("eager", None, "eager", None, None, None, 1.0, None, GEOMETRY, (5, 32, 32), "tiny")
    return Catalog("wan-tiny", [merged, sep, eager], {"style-b": {"abspath": "/z"}})


def _video(**fields):
    return parse_video_request({"prompt": "a cat", **fields}, _catalog(), Limits())


def _status(fn, *args, **kw):
    with pytest.raises(ApiError) as e:
        fn(*args, **kw)
    return e.value.status, e.value.param, e.value.message


def test_video_request_defaults_and_routing():
    r = _video(lora="style-a", size="64x32", seconds="1", seed=str(2**64 - 1))
    assert (r.engine, r.width, r.height, r.frames, r.seed) == ("style-a", 64, 32, 17, 2**64 - 1)
    assert r.size == "64x32" and r.seconds == "1"
    assert _video(lora="style-b").engine == "sep"  # library LoRA -> the separate-mode engine (swap)
    assert _video().engine == "eager"  # no LoRA -> the engine without one


@pytest.mark.parametrize("fields,status,param", [
    ({"lora": "nope"}, 404, "lora"),  # unknown LoRA
    ({"model": "sora-2"}, 404, "model"),
    ({"size": "832x480", "lora": "style-a"}, 400, "size"),  # out of the engine's profile (max 128)
    ({"frames": 6}, 400, "frames"),  # not 4k+1
    ({"frames": 21, "lora": "style-a"}, 400, "frames"),  # beyond the profile's 17
    ({"frames": 1000}, 400, "frames"),  # beyond the server cap, before anything else
    ({"size": "4096x4096"}, 400, "size"),  # eager: only the server's pixel cap bounds it
    ({"steps": 0}, 400, "steps"), ({"steps": 51}, 400, "steps"),
    ({"guidance": "nan"}, 400, "guidance"), ({"guidance": 1e999}, 400, "guidance"),
    ({"seed": "abc"}, 400, "seed"), ({"seed": -1}, 400, "seed"), ({"seed": str(2**64)}, 400, "seed"),
    ({"seed": 1.5}, 400, "seed"), ({"seed": True}, 400, "seed"),
    ({"fps": -5}, 400, "fps"),
    ({"prompt": ""}, 400, "prompt"), ({"prompt": "x" * 5000}, 400, "prompt"), ({"prompt": 7}, 400, "prompt"),
    ({"lora_scale": 0.5, "lora": "style-a"}, 400, "lora_scale"),  # merged: scale baked in
    ({"temperature": 1}, 400, "temperature"),
])
def test_video_request_refusals(fields, status, param):
    got_status, got_param, _ = _status(_video, **fields)
    assert (got_status, got_param) == (status, param)


def test_video_request_schedule():
    """A recipe resolves into the request's fields (what the replica runs and the job object echoes); a multipart
    text list and a JSON list read alike; a job stored before the schedule fields still loads."""
    r = _video(recipe="distill-4step")
    assert (r.steps, r.guidance, r.timesteps, r.shift, r.recipe) == (4, 1.0, (1000.0, 750.0, 500.0, 250.0), 5.0,
                                                                     "distill-4step")
    assert r.schedule().forwards == 4 and not r.schedule().cfg
    text = _video(timesteps="900,500", shift="2.5", guidance="1")
    assert (text.steps, text.timesteps, text.shift) == (2, (900.0, 500.0), 2.5)
    assert _video(timesteps=[900, 500], shift=2.5, guidance=1).schedule() == text.schedule()
    assert (_video().steps, _video().guidance, _video().timesteps) == (2, 5.0, None)  # defaults as before
    stored = VideoRequest.from_dict(json.loads(json.dumps(r.to_dict())))  # through the job store's JSON
    assert stored.schedule() == r.schedule()
    old = {k: v for k, v in text.to_dict().items() if k not in ("timesteps", "shift", "recipe")}
    assert VideoRequest.from_dict(old).schedule() == Schedule(steps=2, guidance=1.0)


@pytest.mark.parametrize("fields,param,text", [
    ({"recipe": "fast"}, "recipe", "choose from"), ({"recipe": 5}, "recipe", "recipe name"),
    ({"recipe": "distill-4step", "steps": 8}, "steps", "steps 8 disagrees with timesteps (recipe distill-4step)"),
    ({"timesteps": "1000,1200"}, "timesteps", "outside (0, 1000]"),
    ({"timesteps": [500, 900]}, "timesteps", "strictly decreasing"),
    ({"timesteps": list(range(60, 0, -1))}, "timesteps", "limit is 50"),  # bounded before it is read
    ({"timesteps": {"a": 1}}, "timesteps", "list of numbers"),
    ({"timesteps": [1000, "x"]}, "timesteps", "not a number"),
    ({"shift": 0}, "shift", "above 0"), ({"shift": "nan"}, "shift", "finite"),
])
def test_video_request_schedule_refusals(fields, param, text):
    status, got_param, message = _status(_video, **fields)
    assert (status, got_param) == (400, param) and text in message, message


def test_prompt_capped_in_tokens_not_only_bytes():
    # 600 ASCII bytes fit the 4096-byte cap but not the 512-token text encoder (tiny: one token per byte + </s>)
    status, param, message = _status(_video, prompt="y" * 600)
    assert status == 400 and param == "prompt" and "tokens" in message


@pytest.mark.parametrize("raw", [b'{"a": 1e999}', b'{"a": NaN}', b'{"a": ' + b"9" * 5000 + b"}",
                                 b"[" * 100000 + b"]" * 100000, b"\xff\xfe", b"[1, 2]", b"{bad"])
def test_pathological_json_is_a_400(raw):
    if raw == b'{"a": 1e999}':  # parses to inf; the field check refuses it
        obj = parse_json_object(raw, Limits())
        assert _status(_video, guidance=obj["a"])[0] == 400
        return
    assert _status(parse_json_object, raw, Limits())[0] == 400


def _png_header_only(width, height):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_images_checked_from_the_header():
    assert check_image(png_bytes(), Limits()) == ("PNG", 32, 32)
    # a decompression bomb: a PNG whose header declares 60000 x 60000 (3.6 GB of pixels) in 60 bytes -> refused
    # from the header, before any pixel is decoded
    assert _status(check_image, _png_header_only(60000, 60000), Limits())[0] == 413
    assert _status(check_image, _png_header_only(5000, 5000), Limits())[0] == 413  # over our 4096^2 cap
    assert _status(check_image, b"x" * 100, Limits())[0] == 400
    assert _status(check_image, png_bytes(), Limits(max_image_bytes=100))[0] == 413
    assert _status(check_image, png_bytes()[:200], Limits())[0] == 400  # truncated


def _npy(shape, dtype=np.float32, fill=0.0):
    buf = io.BytesIO()
    np.save(buf, np.full(shape, fill, dtype))
    return base64.b64encode(buf.getvalue()).decode()


def test_predict_batch_comes_from_the_tensor():
    cat, limits = _catalog(), Limits()
    ok = parse_predict_request({"inputs": {"latents": _npy((2, 36, 2, 4, 4))}, "batch": 1}, cat, limits)
    assert ok.batch == 2
    # batch 64 in the tensor, "batch": 1 in the body: refused from the .npy header, nothing decoded
    status, _, message = _status(parse_predict_request, {"inputs": {"latents": _npy((64, 36, 2, 4, 4))},
                                                         "batch": 1}, cat, limits)
    assert status == 400 and "batch 64" in message
    assert _status(parse_predict_request, {"inputs": {"latents": _npy((1, 36, 2, 4, 4), np.int64)}}, cat,
                   limits)[0] == 400
    assert _status(parse_predict_request, {"inputs": {"text": _npy((1, 512, 31))}}, cat, limits)[0] == 400
    assert _status(parse_predict_request, {"batch": 3}, cat, limits)[0] == 400



@pytest.fixture(scope="module")
def profile_server(tmp_path_factory):
    """The real HTTP stack over _catalog(): its engines are never loaded, since every request below is refused
    at the ingress."""
    from wanrt.runtime.serving.app import build_app
    from tests.serve_helpers import ThreadedServer, local_service

    with ThreadedServer(build_app(local_service(_catalog(), tmp_path_factory.mktemp("store")))) as srv:
        yield srv


@pytest.mark.parametrize("path,body,param", [
    ("/v1/videos", {"frames": 21}, "frames"),  # the profile's max is 17 frames, 128 pixels
    ("/v1/videos", {"size": "32x144"}, "size"), ("/v1/videos", {"size": "144x32"}, "size"),  # WIDTHxHEIGHT
    ("/v1/predict", {"frames": 21}, "frames"), ("/v1/predict", {"height": 144}, "height"),
    ("/v1/predict", {"width": 144}, "width"),
    ("/v1/predict", {"inputs": {"latents": _npy((1, 36, 6, 4, 4))}}, "frames"),  # 6 latent frames = 21 frames
])
def test_out_of_profile_shapes_name_their_param_over_http(profile_server, path, body, param):
    """The axis comes from the contract's error (BadInputError.param), mapped to the request's own field."""
    import http.client

    body = {**body, "lora": "style-a", **({"prompt": "a cat"} if path == "/v1/videos" else {})}
    conn = http.client.HTTPConnection("127.0.0.1", profile_server.port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        status, err = resp.status, json.loads(resp.read())["error"]
    finally:
        conn.close()
    assert (status, err["param"], err["code"]) == (400, param, "outside_engine_profile"), err
    assert "engine 'style-a'" in err["message"] and "outside the artifact's range" in err["message"]


# ------------------------------------------------------------------------------------------------ store
def test_store_recovers_in_flight_jobs_and_expires(tmp_path):
    store = JobStore(tmp_path, ttl_s=60, max_attempts=2)
    done = store.add({"steps": 2}, b"img", None)["id"]
    assert store.start(done) and store.complete(done, b"mp4", 1.0)
    running = store.add({"steps": 2}, b"img", "a")["id"]
    store.start(running)
    twice = store.add({"steps": 2}, b"img", "a")["id"]
    store.start(twice)
    store._exec("UPDATE jobs SET attempts=2 WHERE id=?", (twice,))
    queued = store.add({"steps": 2}, b"img", "b")["id"]
    (tmp_path / "inputs" / "video_deadbeef.img").write_bytes(b"orphan")  # a crash between file and row
    with pytest.raises(BadInputError, match="in use"):
        JobStore(tmp_path)  # one server per store
    store.close()  # "crash": nothing is marked

    store = JobStore(tmp_path, ttl_s=60, max_attempts=2)
    assert store.recover() == {"requeued": 1, "failed": 1, "orphans_removed": 1}
    assert [r["id"] for r in store.queued()] == [running, queued]
    failed = store.get(twice)
    assert failed["status"] == "failed" and failed["error_code"] == "server_restarted"
    assert store.get(done)["status"] == "completed" and store.video_path(done).read_bytes() == b"mp4"
    assert store.expire(now=time.time() + 61) == 2  # the completed and the failed job
    assert store.get(done) is None and not store.video_path(done).exists()
    rows, more = store.list(limit=1, order="asc")
    assert rows[0]["id"] == running and more
    rows, more = store.list(after=rows[0]["id"], limit=5, order="asc")
    assert [r["id"] for r in rows] == [queued] and not more
    store.close()


# ------------------------------------------------------------------------------------------------ bundles
def test_pack_verify_and_tampering(tmp_path):
    from wanrt.runtime.serving.bundle import load_catalog, pack_bundle, verify_bundle

    export = tmp_path / "export"
    export.mkdir()
    manifest = {"schema": 1, "kind": "onnx", "specs": {"model": {"source": "tiny"}},
                "payload": {"onnx": "model.onnx", "geometry": GEOMETRY,
                            "shape_ranges": {"latent": {"F": [1, 5], "H": [2, 16], "W": [2, 16]}},
                            "lora": {"enabled": False}}}
    (export / "manifest.json").write_text(json.dumps(manifest))
    (export / "model.onnx").write_bytes(b"onnx bytes")
    lora = tmp_path / "l.safetensors"
    from safetensors.numpy import save_file

    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": np.zeros((4, 24), np.float32)}, str(lora))
    bundle = tmp_path / "b"
    with pytest.raises(BadInputError, match="no engine of this bundle can swap"):  # tests/test_trust2_refit.py
        pack_bundle(bundle, [("base", str(export))], [("style", str(lora))], name="wan-tiny")
    pack_bundle(bundle, [("base", str(export))], [], name="wan-tiny")
    report = verify_bundle(bundle)
    assert report["ok"], report["problems"]
    assert report["engines"][0]["backend"] == "ort" and report["engines"][0]["runtime"] is None
    cat = load_catalog(bundle)
    assert cat.model == "wan-tiny" and cat.route(None).name == "base"
    with pytest.raises(BadInputError, match="exists"):
        pack_bundle(bundle, [("base", str(export))], [])
    with pytest.raises(BadInputError, match="twice"):
        pack_bundle(tmp_path / "c", [("x", str(export))], [("x", str(lora))])

    (bundle / "engines/base/model.onnx").write_bytes(b"tampered!!")
    (bundle / "engines/base/extra.bin").write_bytes(b"added")
    problems = verify_bundle(bundle)["problems"]
    assert any("sha256" in p for p in problems) and any("not in the manifest" in p for p in problems)
    with pytest.raises(BadInputError, match="sha256|manifest"):
        load_catalog(bundle)

    # a manifest that points outside the bundle is refused, not followed
    m = json.loads((bundle / "manifest.json").read_text())
    m["payload"]["files"] = {"../l.safetensors": "0" * 64}
    m["payload"]["engines"][0]["path"] = "/etc"
    (bundle / "manifest.json").write_text(json.dumps(m))
    problems = verify_bundle(bundle)["problems"]
    assert any("outside" in p and "l.safetensors" in p for p in problems)
    assert any("outside" in p and "/etc" in p for p in problems)


# ------------------------------------------------------------------------------------------------ scheduling
def test_scheduler_groups_by_stack_without_starving(tmp_path):
    from wanrt.runtime.serving.scheduler import Scheduler

    class _NoEngine:  # the pick policy never touches the engine
        slots = 1

    store = JobStore(tmp_path)
    sched = Scheduler(store, _NoEngine(), Limits(), group_wait_s=30.0)
    now = time.time()
    a, b, c = (("distill", 1.0), ("style", 0.8)), (("distill", 1.0), ("style", 0.5)), (("style", 0.8),)
    for i, stack in enumerate([a, b, a, b, a]):  # b: the same LoRAs at another strength is another stack
        sched._queue.append({"id": f"j{i}", "stack": stack, "created_at": now})
    sched._recent.append(a)  # stack a was just run: its jobs go first, no swap
    assert [sched._pick()["id"] for _ in range(3)] == ["j0", "j2", "j4"]
    sched._recent.append(b)
    assert [sched._pick()["id"] for _ in range(2)] == ["j1", "j3"]
    # an old job is taken first whatever its stack: grouping never starves it
    sched._queue.extend([{"id": "old", "stack": c, "created_at": now - 60}, {"id": "new", "stack": a,
                                                                             "created_at": now}])
    sched._recent.append(a)
    assert sched._pick()["id"] == "old"
    store.close()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_pack_verify_and_serve_refusals(tmp_path):
    from click.testing import CliRunner

    from wanrt.commands.main import cli as main

    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({
        "schema": 1, "kind": "onnx", "specs": {"model": {"source": "tiny"}},
        "payload": {"onnx": "model.onnx", "geometry": GEOMETRY, "lora": {"enabled": False},
                    "shape_ranges": {"latent": {"F": [1, 5], "H": [2, 16], "W": [2, 16]}}}}))
    (export / "model.onnx").write_bytes(b"onnx bytes")
    runner = CliRunner()
    bundle = tmp_path / "bundle"
    r = runner.invoke(main, ["pack", "-o", str(bundle), "--artifact", f"base={export}"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["verify", str(bundle)])
    assert r.exit_code == 0 and "ok: hashes match" in r.output
    (bundle / "engines/base/model.onnx").write_bytes(b"changed")
    r = runner.invoke(main, ["verify", str(bundle)])
    assert r.exit_code == 2 and "sha256" in r.output
    r = runner.invoke(main, ["pack", "-o", str(tmp_path / "x"), "--artifact", "no-equals-sign"])
    assert r.exit_code == 2 and "NAME=PATH" in r.output
    # beyond loopback without a token: refused before anything starts
    r = runner.invoke(main, ["serve", "--backend", "eager", "--host", "0.0.0.0"], env={"WANRT_API_TOKEN": ""})
    assert r.exit_code == 2 and "--token" in r.output
