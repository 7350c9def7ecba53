"""Model files as users bring them, made from randomly initialised tiny networks of several architectures.

Each is saved the way real files are: a bare state dict in a .pth, one wrapped in `params` or `params_ema`
(BasicSR's training checkpoints), or a .safetensors (half precision, as many community files are).
spandrel infers each configuration from the tensors, so a network of one block and 16 channels is
detected and converted exactly like a real one, in seconds. Also the malicious files: pickles whose
loading would run code that touches a marker file.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Wrapper = Literal["plain", "params", "params_ema", "safetensors"]


@dataclass(frozen=True)
class UserModel:
    id: str  # the file's stem, which is the model's id
    architecture: str  # what spandrel must detect
    scale: int
    purpose: str
    wrapper: Wrapper
    build: Callable[[], Any]  # -> torch.nn.Module

    @property
    def file_name(self) -> str:
        return f"{self.id}.safetensors" if self.wrapper == "safetensors" else f"{self.id}.pth"


def _esrgan(scale: int) -> Any:
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(num_filters=16, num_blocks=1, scale=scale)


def _compact() -> Any:
    from spandrel.architectures.Compact import Compact

    return Compact(num_feat=16, num_conv=2, upscale=4)


def _span() -> Any:
    from spandrel.architectures.SPAN import SPAN

    return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=2)


def _swinir() -> Any:
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(
        upscale=2,
        img_size=16,
        window_size=4,
        embed_dim=12,
        depths=[1],
        num_heads=[2],
        mlp_ratio=1,
        upsampler="pixelshuffle",
    )


def _scunet() -> Any:
    from spandrel.architectures.SCUNet import SCUNet

    return SCUNet(in_nc=3, config=[1] * 7, dim=64)  # its attention heads are 32 wide: dim 64 is the least


def _fbcnn() -> Any:
    from spandrel.architectures.FBCNN import FBCNN

    # The quality-factor branch is 512 wide whatever the rest is; nb=2 keeps the blocks sequences.
    return FBCNN(nc=[8, 16, 32, 512], nb=2)


USER_MODELS = [
    UserModel("tiny-esrgan-1x", "ESRGAN", 1, "restore", "plain", lambda: _esrgan(1)),
    UserModel("tiny-esrgan-2x", "ESRGAN", 2, "upscale", "params_ema", lambda: _esrgan(2)),
    UserModel("tiny-esrgan-4x", "ESRGAN", 4, "upscale", "safetensors", lambda: _esrgan(4)),
    UserModel("tiny-compact-4x", "Compact", 4, "upscale", "params", _compact),
    UserModel("tiny-span-2x", "SPAN", 2, "upscale", "safetensors", _span),
    UserModel("tiny-swinir-2x", "SwinIR", 2, "upscale", "params_ema", _swinir),
    UserModel("tiny-scunet-1x", "SCUNet", 1, "restore", "plain", _scunet),
    UserModel("tiny-fbcnn-1x", "FBCNN", 1, "restore", "safetensors", _fbcnn),
]


def write_model(model: UserModel, folder: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # SwinIR's and SCUNet's torch.meshgrid calls warn about `indexing`
        warnings.simplefilter("ignore", UserWarning)
        network = model.build()
    state = {key: value.detach().clone() for key, value in network.state_dict().items()}
    path = folder / model.file_name
    if model.wrapper == "safetensors":
        save_file({key: value.half().contiguous() for key, value in state.items()}, str(path))
    elif model.wrapper == "plain":
        torch.save(state, path)
    else:
        torch.save({model.wrapper: state}, path)
    return path


class _RunsCode:
    """A pickle payload: unpickling it calls `function(argument)` (what a malicious model file does)."""

    def __init__(self, function: Callable[[str], Any], argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, (self.argument,))


def write_malicious_files(folder: Path, marker: Path) -> list[Path]:
    """Two crafted files whose loading would create `marker`: a torch zip (.pth) through os.system, and
    a raw pickle (.ckpt) through builtins.exec. Each looks like a state dict with one tensor beside it."""
    import torch

    zipped = folder / "evil-system.pth"
    torch.save(
        {"params": {"conv.weight": torch.zeros(1)}, "x": _RunsCode(os.system, f"touch {marker}")}, zipped
    )
    raw = folder / "evil-exec.ckpt"
    payload = _RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    raw.write_bytes(pickle.dumps({"state_dict": {"x": payload}}, protocol=2))
    return [zipped, raw]
