"""A tiny randomly initialised RealESRGAN_x2plus (1 RRDB block instead of 23), saved the way the official
file is ({'params_ema': state dict}, basicsr key names), so a chain of built-in models (x2plus, then the
embedded realesr-animevideov3) runs through the real loader and backends in seconds."""

from __future__ import annotations

from pathlib import Path

X2PLUS_FILE = "RealESRGAN_x2plus.pth"


def write_tiny_x2plus(weights_dir: Path, seed: int = 0) -> Path:
    from tests.test_weights import official_rrdbnet_state, save_official

    return save_official(weights_dir / X2PLUS_FILE, official_rrdbnet_state(1, scale=2, seed=seed))
