"""Issue 9, LoRA input: one validation pass before any model loads (items 8, 9, 10) and a finite check of every
exported initializer, always (item 7)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

from wanrt.errors import BadInputError, LoraError
from wanrt.export.finite import check_finite_initializers
from wanrt.export.lora_formats import check_lora_source, validate_lora_file

MODULE = "transformer.blocks.0.attn1.to_q"


def _lora(path, a=None, b=None, metadata=None, extra=None):
    a = torch.randn(4, 32) * 0.01 if a is None else a
    b = torch.randn(32, 4) * 0.01 if b is None else b
    sd = {f"{MODULE}.lora_A.weight": a, f"{MODULE}.lora_B.weight": b, **(extra or {})}
    save_file(sd, str(path), metadata=metadata)
    return path


def _meta(**cfg):
    return {"format": "pt", "lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 4, **cfg})}


# -------------------------------------------------------------------------------------- items 8, 9, 10


@pytest.mark.parametrize("case, match", [
    ("alpha_string", "lora_alpha 'abc' is not a finite number"),
    ("alpha_nan", "lora_alpha nan is not a finite number"),
    ("metadata_list", "is a JSON list, not an object"),
    ("fp8", "float8_e4m3fn; LoRA tensors must be float16, bfloat16, float32 or float64"),
    ("rank0_with_alpha", "rank-0 factors"),
    ("complex64", "complex64; LoRA tensors must be"),
    ("bool", "is bool; LoRA tensors must be"),
    ("int8", "is int8; LoRA tensors must be"),
    ("nan_factor", "contains NaN values"),
    ("inf_alpha", "contains Inf values"),
    ("rank_mismatch", "inconsistent rank"),
])
def test_lora_file_validation_without_a_model(tmp_path, case, match):
    """Each used to be a traceback, a silent cast (complex -> real) or an exit-0 export."""
    p = tmp_path / "lora.safetensors"
    alpha_key = {f"{MODULE}.alpha": torch.tensor(4.0)}
    if case == "alpha_string":
        _lora(p, metadata={"lora_adapter_metadata": json.dumps({"lora_alpha": "abc"})})
    elif case == "alpha_nan":
        _lora(p, metadata={"lora_adapter_metadata": '{"lora_alpha": NaN}'})
    elif case == "metadata_list":
        _lora(p, metadata={"lora_adapter_metadata": json.dumps([1, 2])})
    elif case == "fp8":
        _lora(p, a=torch.zeros(4, 32).to(torch.float8_e4m3fn), b=torch.zeros(32, 4).to(torch.float8_e4m3fn))
    elif case == "rank0_with_alpha":
        _lora(p, a=torch.zeros(0, 32), b=torch.zeros(32, 0), extra=alpha_key)
    elif case == "complex64":
        _lora(p, a=torch.randn(4, 32, dtype=torch.complex64), b=torch.randn(32, 4, dtype=torch.complex64))
    elif case == "bool":
        _lora(p, a=torch.ones(4, 32, dtype=torch.bool), b=torch.ones(32, 4, dtype=torch.bool))
    elif case == "int8":
        _lora(p, a=torch.ones(4, 32, dtype=torch.int8), b=torch.ones(32, 4, dtype=torch.int8))
    elif case == "nan_factor":
        a = torch.randn(4, 32)
        a[1, 2] = math.nan
        _lora(p, a=a)
    elif case == "inf_alpha":
        _lora(p, extra={f"{MODULE}.alpha": torch.tensor(math.inf)})
    elif case == "rank_mismatch":
        _lora(p, b=torch.randn(32, 3))
    with pytest.raises(LoraError, match=match) as e:
        check_lora_source(p)  # what the CLI runs before loading any model
    assert "\n" not in str(e.value)


def test_valid_files_pass_and_keep_their_config(tmp_path):
    p = _lora(tmp_path / "ok.safetensors", metadata=_meta(alpha_pattern={"to_q": 8}))
    f = validate_lora_file(p)
    assert f.cfg["lora_alpha"] == 4 and f.fmt == "diffusers" and len(f.sd) == 2


def _wanrt(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "wanrt", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_a_bad_lora_is_refused_before_the_model_loads(tmp_path):
    """The model is an unreachable hub id: had it been loaded first, the error would be about the hub (and take
    seconds of retries); the LoRA is checked first, so the error is the LoRA's."""
    a = torch.randn(4, 32)
    a[0, 0] = math.nan
    lora = _lora(tmp_path / "nan.safetensors", a=a)
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    r = _wanrt("export", "--model", "someorg/some-model", "--lora", str(lora), "-o", str(tmp_path / "out"),
               env=env, timeout=60)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "contains NaN values" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- item 7


def _graph(tmp_path, dtype: int, values: np.ndarray):
    init = helper.make_tensor("w", dtype, values.shape, values.tobytes(), raw=True)
    node = helper.make_node("Identity", ["w"], ["y"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", dtype, values.shape)], [init])
    path = tmp_path / f"m{dtype}.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("dtype, bits, bad", [
    (TensorProto.FLOAT, np.float32, np.float32(np.nan)),
    (TensorProto.FLOAT16, np.float16, np.float16(np.inf)),
    (TensorProto.BFLOAT16, np.uint16, np.uint16(0x7FC0)),  # bf16 NaN
])
def test_initializer_finite_check_per_dtype(tmp_path, dtype, bits, bad):
    ok = np.ones(6, dtype=bits) if bits is not np.uint16 else np.full(6, 0x3F80, np.uint16)  # bf16 1.0
    assert check_finite_initializers(_graph(tmp_path, dtype, ok)) == 1
    ok[3] = bad
    with pytest.raises(BadInputError, match=r"1 initializers with NaN/Inf values, e.g. w \(1\)"):
        check_finite_initializers(_graph(tmp_path, dtype, ok))


def test_initializer_check_reads_external_data(tmp_path):
    values = np.ones(1000, np.float32)
    values[999] = np.inf
    path = _graph(tmp_path, TensorProto.FLOAT, values)
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    with pytest.raises(BadInputError, match="NaN/Inf"):
        check_finite_initializers(path)


def test_non_finite_lora_scale_is_refused_up_front(tmp_path):
    """`wanrt export --rank 4 --lora-scale nan --no-validate` exported 24 non-finite initializers with exit 0."""
    r = _wanrt("export", "--rank", "4", "--lora-scale", "nan", "--no-validate", "-o", str(tmp_path / "nan-out"))
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert "--lora-scale" in errors[0] and "nan" in errors[0], errors[0]
    assert os.listdir(tmp_path) == []


def test_overflowing_lora_never_reaches_an_export(tmp_path):
    """An `.alpha` of 1e30 with large (finite) factors passes every file check but overflows fp32 in the merge;
    the always-on initializer check refuses the export (validation skipped), and nothing is written."""
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    big = torch.full((4, 24), 1e10)
    p = tmp_path / "big.safetensors"
    save_file({"blocks.0.attn1.to_q.lora_A.weight": big, "blocks.0.attn1.to_q.lora_B.weight": big.T.contiguous(),
               "blocks.0.attn1.to_q.alpha": torch.tensor(1e30)}, str(p))
    validate_lora_file(p)  # finite, floating, consistent: the file itself is fine
    with pytest.raises(BadInputError, match="NaN/Inf values"):
        export_model(ModelSpec("tiny"), LoraSpec(file=str(p)), ExportSpec(validate=False), tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["big.safetensors"]
