"""LoRA stacks on the server (issue 18, item 4): the `loras` field checked before anything is allocated, routing by
fit (every LoRA's modules inside an engine's branch, the summed rank per module within the branch's), the stack
recorded with the job, `wanrt pack`'s footprints and refusal, and a two-LoRA job through the real HTTP app with the
openai client, its DiT output equal to eager's of the same stack."""

import base64
import io
import json
import re
import textwrap
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import openai
import pytest

from wanrt.runtime.serving.catalog import Catalog, EngineInfo
from wanrt.runtime.serving.limits import ApiError, Limits
from wanrt.runtime.serving.requests import VideoRequest, parse_predict_request, parse_video_request
from wanrt.runtime.serving.stacks import Footprint

from tests.serve_helpers import openai_client, ThreadedServer, local_service, png_bytes, wait_for

warnings.filterwarnings("ignore", category=DeprecationWarning)

GEOMETRY = {"in_channels": 36, "text_dim": 32, "image_dim": 16}
RANGE = {"F": (1, 5), "H": (2, 16), "W": (2, 16)}
BLOCK = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ffn.net.0.proj", "ffn.net.2")
ALL = [f"blocks.0.{s}" for s in BLOCK]
SELF_ATTN = ALL[:4]


def _fp(modules, rank, bias=()):
    return Footprint({m: rank for m in modules}, frozenset(bias))


def _catalog() -> Catalog:
    """Engines: `style-a` merged at 0.7, `sep` (rank 4 on every module, a bias slot on to_k), `wide` (rank 8,
    self-attention only, no bias slot). Library: rank-2 `distill` (all), rank-2 `style` (self-attn), rank-4 `big`
    (all), rank-4 `attn4` (self-attn), rank-2 `biased` (self-attn, a bias delta on to_k), and `legacy` (packed
    before footprints were recorded)."""
    def engine(name, mode, branch=None, lora=None, scale=1.0):
        return EngineInfo(name, f"/{name}", "ort", lora, mode, branch.rank if branch else 4, scale, RANGE, GEOMETRY,
                          (5, 32, 32), "tiny", branch=branch)

    engines = [engine("style-a", "merged", lora="style-a", scale=0.7),
               engine("sep", "separate", _fp(ALL, 4, bias=[ALL[1]])), engine("wide", "separate", _fp(SELF_ATTN, 8))]
    library = {"distill": _fp(ALL, 2), "style": _fp(SELF_ATTN, 2), "big": _fp(ALL, 4), "attn4": _fp(SELF_ATTN, 4),
               "biased": _fp(SELF_ATTN, 2, bias=[ALL[1]]), "legacy": None}
    return Catalog("wan-tiny", engines, {n: {"abspath": f"/{n}", "footprint": fp} for n, fp in library.items()})


def _video(**fields):
    return parse_video_request({"prompt": "a cat", **fields}, _catalog(), Limits())


def _stack(*entries):
    return [{"name": e[0], **({"scale": e[1]} if len(e) > 1 else {})} for e in entries]


# ------------------------------------------------------------------------------------------------ the field
@pytest.mark.parametrize("fields,status,param,code", [
    ({"loras": "[{"}, 400, "loras", "invalid_json"),  # a form field that is not JSON
    ({"loras": {"name": "distill"}}, 400, "loras", "invalid_value"),  # an object, not a list
    ({"loras": _stack(*[(f"x{i}",) for i in range(9)])}, 400, "loras", "too_many_loras"),  # max_stack 8
    ({"loras": ["distill"]}, 400, "loras[0]", "invalid_value"),
    ({"loras": [{"name": "distill", "weight": 1}]}, 400, "loras[0].weight", "unknown_parameter"),
    ({"loras": [{"name": 7}]}, 400, "loras[0].name", "invalid_value"),
    ({"loras": _stack(("distill",), ("distill", 0.5))}, 400, "loras[1].name", "duplicate_lora"),
    ({"loras": _stack(("distill", "nan"))}, 400, "loras[0].scale", "invalid_value"),
    ({"loras": _stack(("distill", 1.0), ("style", 4.5))}, 400, "loras[1].scale", "invalid_value"),  # > 4
    ({"loras": _stack(("distill",), ("nope",))}, 404, "loras[1].name", "lora_not_found"),
    ({"loras": _stack(("distill",)), "lora": "style"}, 400, "loras", "invalid_value"),  # both spellings
    ({"lora_scale": 0.5}, 400, "lora_scale", "invalid_value"),  # a strength of no LoRA
    ({"loras": _stack(("style-a",), ("distill",))}, 400, "loras[0].name", "lora_not_stackable"),  # merged only
    ({"loras": _stack(("sep",), ("distill",))}, 400, "loras[0].name", "lora_not_stackable"),  # an engine's own
    ({"loras": _stack(("style-a", 0.5))}, 400, "loras[0].scale", "invalid_value"),  # merged at 0.7
    ({"loras": _stack(("distill",), ("big",))}, 400, "loras", "stack_does_not_fit"),
])
def test_loras_field_refusals(fields, status, param, code):
    with pytest.raises(ApiError) as e:
        _video(**fields)
    assert (e.value.status, e.value.param, e.value.code) == (status, param, code), e.value.message


def test_routing_by_fit():
    r = _video(loras=_stack(("distill", 1.0), ("style", 0.8)))  # 2 + 2 <= 4 on self-attention: `sep`
    assert (r.engine, r.loras) == ("sep", (("distill", 1.0), ("style", 0.8)))
    # 2 + 4 > 4 on self-attention: not `sep`, but `wide` (rank 8 there) holds it
    assert _video(loras=_stack(("style",), ("attn4", -1.0))).engine == "wide"
    assert _video(loras=_stack(("style", 2.0))).loras == (("style", 2.0),)
    assert _video(loras=_stack(("distill",))).loras == (("distill", 1.0),)  # no scale: the LoRA's own (1)
    assert _video(loras=[]).engine == "sep" and _video(loras=[]).loras == ()  # no LoRA: a branch zeroed
    # the merged LoRA at its baked scale (or none given) is the merged engine, no swap
    assert _video(loras=_stack(("style-a",))).loras == (("style-a", 0.7),)
    assert (_video(lora="style-a", lora_scale=0.7).engine, _video(lora="style-a").engine) == ("style-a", "style-a")
    assert _video(loras=_stack(("sep",))).loras == (("sep", None),)  # sep's own exported LoRA, as exported
    assert _video(loras=_stack(("biased",), ("style",))).engine == "sep"  # the bias delta has its slot there


def test_a_stack_that_fits_no_engine_names_what_does_not_fit():
    with pytest.raises(ApiError) as e:
        _video(loras=_stack(("distill", 1.0), ("big", 0.5)))
    msg = e.value.message
    assert "distill:1.0+big:0.5 fits no engine" in msg
    assert "engine 'sep': module blocks.0.attn1.to_k needs rank 6 (distill 2 + big 4) and its branch has rank 4" \
        in msg and "--max-rank 6" in msg
    assert "engine 'wide': LoRA 'distill' adapts 2 module(s) outside its branch (e.g. blocks.0.ffn.net.0.proj" in msg
    with pytest.raises(ApiError, match="'biased' has bias deltas on 1 module"):  # `wide` has no bias slot...
        _video(loras=_stack(("biased",), ("big",)))  # ...and `sep` no rank for 2 + 4


def test_packed_before_footprints_serves_alone_and_refuses_to_stack():
    assert _video(lora="legacy").engine == "sep"  # what `wanrt pack` checked then: the first separate engine
    with pytest.raises(ApiError, match="'legacy' are not recorded in the bundle: repack"):
        _video(loras=_stack(("legacy",), ("style",)))


def test_loras_listing_shows_rank_targets_and_fits():
    got = {x["id"]: x for x in _catalog().lora_objects()}
    assert got["distill"]["rank"] == 2 and got["distill"]["engines"] == ["sep"]
    assert got["distill"]["targets"] == {"modules": 6, "groups": ["self-attn", "ffn"]}
    assert got["style"]["engines"] == ["sep", "wide"] and got["style"]["targets"]["groups"] == ["self-attn"]
    assert got["big"]["engines"] == ["sep"] and got["biased"]["engines"] == ["sep"]
    assert got["attn4"]["engines"] == ["sep", "wide"]
    assert (got["style-a"]["served_as"], got["style-a"]["engines"]) == ("merged", ["style-a"])
    assert got["wide"]["rank"] == 8 and got["wide"]["engines"] == ["wide"]  # an engine's own LoRA: its branch
    assert got["legacy"]["targets"] is None and got["legacy"]["engines"] == ["sep"]


def test_predict_takes_a_stack():
    req = parse_predict_request({"loras": _stack(("distill", 0.5), ("style",))}, _catalog(), Limits())
    assert (req.engine, req.loras) == ("sep", (("distill", 0.5), ("style", 1.0)))


def test_the_stack_survives_a_restart(tmp_path):
    from wanrt.runtime.serving.job_store import JobStore
    from wanrt.runtime.serving.scheduler import Scheduler

    class _NoEngine:  # submit and recovery never touch the engine
        slots = 1

    req = _video(loras=_stack(("distill", 1.0), ("style", 0.8)))
    store = JobStore(tmp_path)
    row = Scheduler(store, _NoEngine(), Limits()).submit(req, b"img")
    assert row["lora"] == "distill:1.0+style:0.8"
    store.close()  # "crash"
    store = JobStore(tmp_path)
    sched = Scheduler(store, _NoEngine(), Limits())
    sched._recover()
    assert [(i["id"], i["stack"]) for i in sched._queue] == [(row["id"], (("distill", 1.0), ("style", 0.8)))]
    assert VideoRequest.from_dict(json.loads(store.get(row["id"])["request"])) == req
    # a job stored before stacks: `lora` + `lora_scale` read back as a one-entry stack
    old = {**{k: v for k, v in req.to_dict().items() if k != "loras"}, "lora": "style", "lora_scale": 0.5}
    assert VideoRequest.from_dict(old).loras == (("style", 0.5),)
    store.close()


# ------------------------------------------------------------------------------------------------ pack
def test_pack_records_footprints_and_refuses_a_lora_that_fits_no_engine(stack_artifacts, tmp_path):
    from click.testing import CliRunner

    from tests.serve_helpers import _lora_file
    from wanrt.commands.main import cli
    from wanrt.runtime.serving.bundle import load_catalog

    catalog = load_catalog(stack_artifacts["stack_bundle"])
    (sep,) = catalog.engines
    assert set(sep.branch.ranks.values()) == {4} and len(sep.branch.ranks) == 12 and not sep.branch.bias
    assert catalog.loras["distill"]["footprint"].ranks == {m: 2 for m in sep.branch.ranks}
    assert catalog.loras["style"]["footprint"].targets() == {"modules": 4, "groups": ["self-attn"]}
    big = _lora_file(tmp_path / "big.safetensors", 5, rank=8, targets="ffn")
    out = tmp_path / "bundle"
    res = CliRunner().invoke(cli, ["pack", "-o", str(out), "--artifact", f"sep={stack_artifacts['separate']}",
                                   "--lora", f"style={stack_artifacts['style']}", "--lora", f"big={big}"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "--lora big: fits no engine of this bundle: 'sep' (blocks.0.ffn.net.0.proj: LoRA rank 8 exceeds the " \
           "engine's rank 4" in lines[0] and not out.exists()


def test_a_built_engine_in_a_bundle_swaps_stacks(stack_artifacts, tmp_path):
    """An OpenVINO engine built from the separate export serves stacks as the export does: its LoRA mode and branch
    come from the engine's own `lora` section (built engines were once read as having no LoRA)."""
    from wanrt.engines.openvino.engine import OvEngineSpec, build_openvino_engine
    from wanrt.runtime.serving.bundle import load_catalog, pack_bundle

    engine = tmp_path / "sep-ov"
    build_openvino_engine(stack_artifacts["separate"], OvEngineSpec(cache=False), engine)
    pack_bundle(tmp_path / "bundle", [("sep-ov", str(engine))],
                [("distill", str(stack_artifacts["distill"])), ("style", str(stack_artifacts["style"]))], name="b")
    catalog = load_catalog(tmp_path / "bundle")
    (info,) = catalog.engines
    assert info.swappable and info.backend == "ov" and set(info.branch.ranks.values()) == {4}
    assert catalog.route_stack((("distill", 1.0), ("style", 0.8)))[0].name == "sep-ov"


# ------------------------------------------------------------------------------------------------ HTTP
@pytest.fixture(scope="module")
def stack_server(stack_artifacts, tmp_path_factory):
    from wanrt.runtime.serving.app import build_app
    from wanrt.runtime.serving.bundle import load_catalog

    service = local_service(load_catalog(stack_artifacts["stack_bundle"]), tmp_path_factory.mktemp("stack-store"))
    with ThreadedServer(build_app(service)) as srv:
        srv.service, srv.artifacts = service, stack_artifacts
        yield srv
    service.scheduler.store.close()




def test_openai_client_runs_a_two_lora_stack_with_a_4_step_schedule(stack_server):
    client = openai_client(stack_server.url)
    worker = stack_server.service.scheduler.engine.worker
    wait_for(lambda: stack_server.service.scheduler.ready)  # the warm-up job's forwards are done
    before = worker.forwards
    stack = [{"name": "distill", "scale": 1.0}, {"name": "style", "scale": 0.8}]
    video = client.videos.create_and_poll(prompt="a cat", model="bundle", size="32x32",
                                          input_reference=("in.png", png_bytes(), "image/png"),
                                          extra_body={"loras": stack, "steps": 4, "guidance": 1.0, "frames": 5})
    assert video.status == "completed", video.error
    extra = video.model_extra["wanrt"]
    assert extra["loras"] == stack and extra["lora"] == "distill:1.0+style:0.8" and extra["engine"] == "sep"
    assert extra["steps"] == 4 and client.videos.download_content(video.id).read()[4:8] == b"ftyp"
    assert worker._loaded["sep"] == (("distill", 1.0), ("style", 0.8))
    assert worker.forwards - before == 4  # guidance 1: one DiT forward per step


def test_a_stack_that_fits_no_engine_is_a_400_naming_it(stack_server):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client(stack_server.url).videos.create(
            prompt="a cat", model="bundle", size="32x32", input_reference=("in.png", png_bytes(), "image/png"),
            extra_body={"loras": [{"name": "distill", "scale": 1.0}, {"name": "style-b", "scale": 0.5}]})
    err = e.value.body
    assert (err["code"], err["param"]) == ("stack_does_not_fit", "loras")
    assert re.search(r"engine 'sep': module blocks\.0\.\S+ needs rank 6 \(distill 2 \+ style-b 4\) and its branch "
                     r"has rank 4", err["message"]), err["message"]


def test_multipart_loras_as_one_json_field_or_unpairable_parts(stack_server):
    client = openai_client(stack_server.url)
    form = {"prompt": "a cat", "model": "bundle", "size": "32x32",
            "input_reference": ("in.png", png_bytes(), "image/png")}
    stack = [{"name": "style", "scale": -0.5}, {"name": "distill"}]  # one field of JSON text: scales may be left out
    video = client.videos.create(**form, extra_body={"loras": json.dumps(stack), "steps": 1})
    assert video.model_extra["wanrt"]["loras"] == [{"name": "style", "scale": -0.5}, {"name": "distill", "scale": 1.0}]
    client.videos.poll(video.id)  # let it end before the next test
    # the client's form spelling of a list of objects (loras[][name] x2, loras[][scale] x1) cannot be paired
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(**form, extra_body={"loras": [{"name": "distill", "scale": 0.5}, {"name": "style"}]})
    assert e.value.body["param"] == "loras" and "2 names and 1 scales" in e.value.body["message"]


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return base64.b64encode(buf.getvalue()).decode()


def _predict(url, body):
    req = urllib.request.Request(url + "/v1/predict", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return np.load(io.BytesIO(r.read()))


def test_predict_with_a_stack_equals_eager_and_a_strength_is_a_swap(stack_server):
    import torch

    from tests.serve_helpers import _tiny
    from wanrt.export.api import LoraSpec
    from wanrt.parse import LoraEntry
    from wanrt.runtime.backends import backend_from_specs

    art = stack_server.artifacts
    g = np.random.default_rng(0)
    inputs = {"latents": g.standard_normal((1, 36, 2, 4, 4), dtype=np.float32),
              "timestep": np.array([700.0], np.float32), "text": g.standard_normal((1, 512, 32), dtype=np.float32),
              "image": g.standard_normal((1, 257, 16), dtype=np.float32)}
    outputs = []
    for style in (0.8, -0.3):  # the second: the same stack at another strength, swapped in without a reload
        served = _predict(stack_server.url, {"format": "npy", "inputs": {k: _npy(v) for k, v in inputs.items()},
                                             "loras": [{"name": "distill", "scale": 1.5},
                                                       {"name": "style", "scale": style}]})
        spec = LoraSpec(file=str(art["distill"]), scale=1.5, mode="separate",
                        stack=(LoraEntry(file=str(art["style"]), strength=style),))
        eager = backend_from_specs("eager", _tiny(), spec)(*(torch.from_numpy(inputs[k]) for k in
                                                             ("latents", "timestep", "text", "image"))).numpy()
        assert float(np.linalg.norm(served - eager) / np.linalg.norm(eager)) < 1e-4
        outputs.append(served)
    assert float(np.linalg.norm(outputs[0] - outputs[1]) / np.linalg.norm(outputs[1])) > 1e-3  # the strength acts


def test_loras_endpoint(stack_server):
    with urllib.request.urlopen(stack_server.url + "/v1/loras", timeout=10) as r:
        got = {x["id"]: x for x in json.loads(r.read())["data"]}
    assert (got["distill"]["rank"], got["distill"]["engines"]) == (2, ["sep"])
    assert got["style"]["targets"] == {"modules": 4, "groups": ["self-attn"]}
    assert got["style-b"]["rank"] == 4 and got["sep"]["served_as"] == "swap"


def test_readme_stack_snippet_as_printed(stack_server, tmp_path, monkeypatch, capsys):
    """The README's stack example (bundle `bundle`, library LoRAs `distill` and `style`) runs unchanged but for
    the port."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = next(textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", readme, re.S) if '"loras"' in b)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(png_bytes())
    exec(snippet.replace("http://127.0.0.1:8000", stack_server.url), {})  # the README's code, as printed
    out = capsys.readouterr().out
    assert out.startswith("completed [{'name': 'distill', 'scale': 1.0}, {'name': 'style', 'scale': 0.8}]"), out
