"""A randomly initialised face network of the official shape, saved the way the official file is, so tests
and benchmarks load it through exactly the code path a user's GFPGANv1.4.pth takes."""

from __future__ import annotations

from pathlib import Path

# The hyperparameters of the official GFPGANv1.3/1.4 clean architecture (and spandrel's detection).
GFPGAN_OFFICIAL = {
    "out_size": 512,
    "num_style_feat": 512,
    "channel_multiplier": 2,
    "decoder_load_path": None,
    "fix_decoder": False,
    "num_mlp": 8,
    "input_is_latent": True,
    "different_w": True,
    "narrow": 1,
    "sft_half": True,
}


def random_gfpgan(seed: int = 0, narrow: float = 1.0):  # -> GFPGANv1Clean
    import torch
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(seed)
    net = GFPGAN(**{**GFPGAN_OFFICIAL, "narrow": narrow}).eval()
    # StyleGAN's noise strengths start at 0 (then the random noise would change nothing); trained files
    # have them non-zero, so give them a trained-like value.
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith(".weight") and parameter.numel() == 1:
                parameter.fill_(0.05)
    return net


def write_random_gfpgan(weights_dir: Path, name: str = "GFPGANv1.4.pth", seed: int = 0) -> Path:
    """Save {'params_ema': state_dict} (the official file's layout, noise buffers included)."""
    import torch

    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / name
    torch.save({"params_ema": random_gfpgan(seed).state_dict()}, path)
    return path


def write_tiny_restoreformer(weights_dir: Path, name: str, seed: int = 0) -> Path:
    """A RestoreFormer spandrel detects from its tensors (32 channels, the least its GroupNorm takes; one
    block per level; a 16-entry codebook), saved as a bare state dict like a community file: a user's face
    model that restores a 512 crop in seconds and converts to OpenVINO in seconds."""
    import torch
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(seed)
    net = RestoreFormer(
        n_embed=16, embed_dim=16, ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1, z_channels=16
    )
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / name
    torch.save(net.state_dict(), path)
    return path


def write_random_codeformer(weights_dir: Path, name: str, seed: int = 0) -> Path:
    """A CodeFormer with the smallest transformer spandrel_extra_arches detects (its VQ autoencoder has a
    fixed size: 68 M parameters), in half-precision .safetensors as community files often are (135 MB)."""
    import warnings

    import torch
    from safetensors.torch import save_file

    with warnings.catch_warnings():  # its import runs torch.jit.script, deprecated: not ours to fix
        warnings.filterwarnings("ignore", "`torch.jit.script`", FutureWarning)
        from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(seed)
    net = CodeFormer(dim_embd=16, n_layers=1, codebook_size=16, connect_list=["32"])
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / name
    save_file({key: value.half().contiguous() for key, value in net.state_dict().items()}, str(path))
    return path
