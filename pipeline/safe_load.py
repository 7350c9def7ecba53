"""Reading a model file without running anyone's code: the one place weights files are opened.

Model files from the internet are mostly pickles, and unpickling runs whatever the file says (a crafted
`__reduce__` calls os.system). So a file is read in one of two ways only:
- .safetensors: a JSON header and raw tensor bytes (safetensors), no code at all;
- .pth / .pt / .ckpt: torch.load(weights_only=True), torch's own allowlist unpickler, which builds tensors
  and plain containers and refuses every other global. TorchScript archives (a .pt holding code) are
  refused by the same flag.
A file that would need anything else is refused with the global it asked for, never loaded another way.
Only converter and detector child processes call this (it imports torch).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.types import WeightsMissingError

if TYPE_CHECKING:
    import torch

StateDict = dict[str, "torch.Tensor"]
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt")
MODEL_SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors")

# How torch words a refusal: "Unsupported global: GLOBAL exec ...", "unsupported GLOBAL posix.system whose
# module posix is blocked", "Unsupported class ...", "... TorchScript archives ...".
_GLOBAL = re.compile(
    r"unsupported (?:global:? )?GLOBAL ([\w.]+)|Unsupported class ([\w.]+)|(TorchScript)", re.I
)
_WEIGHTS_ONLY = "Weights only load failed"


class UnsafeModelFileError(WeightsMissingError):
    """The file is not plain weights: loading it would run code (or it is TorchScript)."""


def read_state_dict(path: Path) -> StateDict:
    """The tensors of a model file, unwrapped from the usual containers (params_ema, params,
    state_dict, ...) by spandrel's canonicalisation. Raises UnsafeModelFileError for a file that would
    run code, WeightsMissingError for one that cannot be read."""
    import torch
    from safetensors.torch import load_file
    from spandrel.__helpers.canonicalize import canonicalize_state_dict  # not in spandrel's __all__

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise WeightsMissingError(f"{path.name}: not a model file ({', '.join(MODEL_SUFFIXES)})")
    try:
        if suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's and safetensors' errors have no common base
        raise _refusal(path, error) from None
    if not isinstance(state, dict):
        raise WeightsMissingError(f"{path.name}: holds a {type(state).__name__}, not a dictionary of tensors")
    return canonicalize_state_dict(state)


def _refusal(path: Path, error: Exception) -> WeightsMissingError:
    text = str(error)
    match = _GLOBAL.search(text)
    if match is None:
        return WeightsMissingError(f"{path.name} cannot be read as weights ({_first_words(text, error)})")
    if match.group(3):
        what = "is a TorchScript archive (code, not just weights)"
    else:
        what = f"would call {match.group(1) or match.group(2)} when loaded (a pickle that runs code)"
    return UnsafeModelFileError(f"{path.name} refused, not loaded: it {what}; only plain weights are read")


def _first_words(text: str, error: Exception) -> str:
    """The line that says what was wrong: torch's own reason after its long weights_only preamble."""
    if _WEIGHTS_ONLY in text and "Unpickler error:" in text:
        text = text.split("Unpickler error:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__
