"""Write the real photos that ship inside installed packages into a folder, as PNG, for `restorer eval`.

    .venv/bin/python benchmarks/eval_photos.py var/eval-photos
    .venv/bin/restorer eval var/eval-photos --degradation bicubic-x4 --out var/eval/bicubic-x4

scikit-image: astronaut (face), coffee, chelsea, rocket, camera (grayscale, face); matplotlib:
grace_hopper (face). Both packages are in the project's `test` extra; nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")


def photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data

    found = {name: getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS}
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        found["grace_hopper"] = np.asarray(Image.open(handle).convert("RGB"))
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in photos().items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
        print(f"{folder / name}.png  {pixels.shape[1]}x{pixels.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
