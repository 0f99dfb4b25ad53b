"""Wan2.2's experts on the server (issue 19, serving part): a two-expert export packed as one engine with a LoRA
library, each expert's branch recorded and checked at routing, and a job whose `loras` name experts through the
real HTTP app with the openai client: the worker loads the ExpertPair, swaps each expert's own stack on that
expert's backend, and the job shows the per-expert stack."""

import json
import warnings
from dataclasses import replace

import openai
import pytest

from wanrt.runtime.serving.bundle import load_catalog, pack_bundle, verify_bundle
from wanrt.runtime.serving.limits import ApiError, Limits
from wanrt.runtime.serving.requests import parse_video_request

from tests.serve_helpers import openai_client, ThreadedServer, local_service, png_bytes, wait_for

warnings.filterwarnings("ignore", category=DeprecationWarning)

TINY22 = "tiny-wan2.2"
# distill at 3 on the high-noise expert and 1.5 on the low one, a style LoRA on the low one only
PER_EXPERT = [{"name": "distill", "scale": 3.0, "expert": "high"}, {"name": "distill", "scale": 1.5, "expert": "low"},
              {"name": "style", "scale": 0.8, "expert": "low"}]


@pytest.fixture(scope="module")
def experts_bundle(tmp_path_factory):
    """A separate-mode (rank 4) tiny-wan2.2 experts export packed as engine `wan22` with rank-2 library LoRAs
    `distill` (every target) and `style` (self-attention), and `wide` (rank 4, every target). ~30 s (two ONNX
    exports)."""
    from wanrt.export.api import LoraSpec, export_experts
    from wanrt.export.lora import synthetic_lora
    from wanrt.export.lora_formats import save_lora_file
    from wanrt.export.model import ModelSpec, load_transformer
    from wanrt.export.onnx_export import ExportSpec

    root = tmp_path_factory.mktemp("serve-experts")
    export = root / "wan22"
    spec = LoraSpec(rank=4, mode="separate", seed=0)
    model = ModelSpec(TINY22, layers=1)  # one block: the same code paths in less export time
    export_experts(model, {"high": spec, "low": spec}, ExportSpec(validate=False), export, progress=False)
    high = load_transformer(replace(model, expert="high"))  # both experts have one geometry
    files = {name: save_lora_file(synthetic_lora(high, rank, targets, seed), root / f"{name}.safetensors")
             for name, rank, targets, seed in (("distill", 2, "all", 31), ("style", 2, "self-attn", 32),
                                               ("wide", 4, "all", 33))}
    bundle = root / "bundle"
    pack_bundle(bundle, [("wan22", str(export))], [(n, str(p)) for n, p in files.items()], name="wan22-bundle")
    return {"root": root, "export": export, "bundle": bundle}


def test_pack_records_the_experts_engine_and_verify_checks_it(experts_bundle):
    bundle = experts_bundle["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    (entry,) = manifest["payload"]["engines"]
    assert (entry["name"], entry["kind"], entry["lora_mode"], entry["boundary_ratio"]) == ("wan22", "experts",
                                                                                         "separate", 0.9)
    assert set(entry["experts"]) == {"high", "low"}
    assert all(set(e["footprint"]["ranks"].values()) == {4} for e in entry["experts"].values())
    files = manifest["payload"]["files"]
    assert {"engines/wan22/manifest.json", "engines/wan22/high/manifest.json", "engines/wan22/low/manifest.json"} \
        <= set(files)
    report = verify_bundle(bundle)
    assert report["ok"], report["problems"]
    (member,) = [f for f in files if f.startswith("engines/wan22/low/") and f.endswith(".onnx")]
    original = (bundle / member).read_bytes()
    (bundle / member).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # a member's file changed
    try:
        assert any(p.startswith(member) for p in verify_bundle(bundle)["problems"])
    finally:
        (bundle / member).write_bytes(original)


def test_routing_checks_each_experts_branch(experts_bundle, tmp_path):
    catalog = load_catalog(experts_bundle["bundle"], verify=False)
    (engine,) = catalog.engines
    assert [x for x, _ in engine.experts] == ["high", "low"] and engine.swappable

    def video(loras):
        return parse_video_request({"prompt": "a cat", "loras": loras}, catalog, Limits())

    req = video(PER_EXPERT)
    assert (req.engine, req.loras) == ("wan22", (("distill@high", 3.0), ("distill@low", 1.5), ("style@low", 0.8)))
    assert video([{"name": "distill"}]).loras == (("distill", 1.0),)  # no expert: both
    # on low: distill (both) 2 + style 2 = 4 fits; high alone takes wide 4 + distill 2 = 6 > its rank 4
    assert video([{"name": "distill"}, {"name": "style", "expert": "low"}]).engine == "wan22"
    with pytest.raises(ApiError) as e:
        video([{"name": "distill"}, {"name": "wide", "expert": "high"}])
    assert (e.value.status, e.value.code) == (400, "stack_does_not_fit")
    assert "expert high: module" in e.value.message and "needs rank 6" in e.value.message
    with pytest.raises(ApiError) as e:  # to both and to one expert: distill twice on high
        video([{"name": "distill"}, {"name": "distill", "expert": "high"}])
    assert (e.value.status, e.value.param, e.value.code) == (400, "loras[1].name", "duplicate_lora")


# ------------------------------------------------------------------------------------------------ HTTP
@pytest.fixture(scope="module")
def experts_server(experts_bundle, tmp_path_factory):
    from wanrt.runtime.serving.app import build_app

    service = local_service(load_catalog(experts_bundle["bundle"]), tmp_path_factory.mktemp("experts-store"))
    with ThreadedServer(build_app(service)) as srv:
        srv.service = service
        yield srv
    service.scheduler.store.close()




def test_a_job_with_a_stack_per_expert_swaps_each_expert(experts_server):
    client = openai_client(experts_server.url)
    worker = experts_server.service.scheduler.engine.worker
    wait_for(lambda: experts_server.service.scheduler.ready)
    before = worker.forwards
    video = client.videos.create_and_poll(prompt="a cat", model="wan22-bundle", size="32x32",
                                          input_reference=("in.png", png_bytes(), "image/png"),
                                          extra_body={"loras": PER_EXPERT, "steps": 4, "guidance": 1.0, "frames": 5})
    assert video.status == "completed", video.error
    extra = video.model_extra["wanrt"]
    assert extra["loras"] == PER_EXPERT and extra["engine"] == "wan22"
    assert extra["lora"] == "distill@high:3.0+distill@low:1.5+style@low:0.8"
    assert client.videos.download_content(video.id).read()[4:8] == b"ftyp"
    assert worker._loaded["wan22@high"] == (("distill", 3.0),)
    assert worker._loaded["wan22@low"] == (("distill", 1.5), ("style", 0.8))
    assert worker.forwards - before == 4  # one forward per step, on whichever expert the step belongs to


def test_a_bad_expert_is_a_400_naming_the_field(experts_server):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client(experts_server.url).videos.create(
            prompt="a cat", model="wan22-bundle", size="32x32", input_reference=("in.png", png_bytes(), "image/png"),
            extra_body={"loras": [{"name": "distill", "scale": 1.0, "expert": "medium"}]})
    assert (e.value.body["param"], e.value.body["code"]) == ("loras[0].expert", "invalid_value")
