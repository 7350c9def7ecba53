"""A tiny randomly initialised RealESRGAN_x2plus (1 RRDB block instead of 23), saved the way the official
file is ({'params_ema': state dict}, basicsr key names), so a chain of built-in models (x2plus, then the
embedded realesr-animevideov3) runs through the real loader, converter and backends in seconds."""

from __future__ import annotations

from pathlib import Path

X2PLUS_FILE = "RealESRGAN_x2plus.pth"


def write_tiny_x2plus(weights_dir: Path, seed: int = 0) -> Path:
    import torch

    generator = torch.Generator().manual_seed(seed)

    def conv(out_ch: int, in_ch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(out_ch, in_ch, 3, 3, generator=generator) * 0.02, torch.zeros(out_ch)

    # Scale 2 feeds the network pixel-unshuffled input: 12 channels into conv_first (spandrel reads the
    # scale from that).
    layers = {"conv_first": conv(64, 12)}
    for r in (1, 2, 3):
        for c in range(1, 6):
            layers[f"body.0.rdb{r}.conv{c}"] = conv(32 if c < 5 else 64, 64 + 32 * (c - 1))
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(64, 64)
    layers["conv_last"] = conv(3, 64)
    state = {}
    for name, (weight, bias) in layers.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / X2PLUS_FILE
    torch.save({"params_ema": state}, path)
    return path
