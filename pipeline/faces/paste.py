"""Paste restored 512x512 faces back into the super-resolved image through the inverse transform.

The blend mask lives in crop space: the part of the crop that came from inside the source image, eroded
and feathered (smoothstep of the distance to its edge), so no box edge shows. Colour is matched to the
super-resolved face underneath by replacing the restored face's lowest frequencies with the
super-resolved ones (detail from the restorer, tone from the surroundings). Only pixels where the warped
mask is non-zero are written: everything else stays byte-identical. Pure numpy/OpenCV, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.faces.align import (
    CROP_SIZE,
    compose,
    destination_footprint,
    invert,
    valid_crop_region,
    warp_affine,
)

# Fractions of the crop edge: the mask is 0 up to ERODE from the usable area's edge and reaches 1 after
# a further FEATHER. The FFHQ template keeps eyes/mouth >= 140 px from the crop edge, so the face itself is
# always fully inside the mask.
ERODE_FRACTION = 24 / 512
FEATHER_FRACTION = 56 / 512
# Gaussian sigma (fraction of the crop edge) below whose frequencies the super-resolved colours win.
COLOUR_SIGMA_FRACTION = 48 / 512


def crop_blend_mask(valid: np.ndarray) -> np.ndarray:
    """Soft float32 mask in crop space from the boolean 'came from the source image' region."""
    size = valid.shape[0]
    padded = np.zeros((size + 2, size + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = valid
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    ramp = np.clip((distance - ERODE_FRACTION * size) / (FEATHER_FRACTION * size), 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def face_mask_for(matrix: np.ndarray, source_size: tuple[int, int], crop_size: int = CROP_SIZE) -> np.ndarray:
    """The crop-space blend mask of a face aligned with `matrix` from a source of (width, height)."""
    return crop_blend_mask(valid_crop_region(matrix, source_size, crop_size))


def match_colour(restored: np.ndarray, underneath: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Restored face with its low frequencies replaced by those of `underneath` (weighted by `weight`)."""
    sigma = COLOUR_SIGMA_FRACTION * restored.shape[0]
    w = weight[..., None].astype(np.float32)
    blurred_difference = cv2.GaussianBlur((underneath - restored) * w, (0, 0), sigma)
    blurred_weight = cv2.GaussianBlur(w, (0, 0), sigma)
    if blurred_weight.ndim == 2:
        blurred_weight = blurred_weight[..., None]
    correction = blurred_difference / np.maximum(blurred_weight, 1e-3)
    return np.clip(restored + correction, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class PastedRegion:
    """Where one face was written: `written` is the ROI-sized boolean mask at (left, top)."""

    left: int
    top: int
    written: np.ndarray

    def full_mask(self, height: int, width: int) -> np.ndarray:
        full = np.zeros((height, width), dtype=bool)
        h, w = self.written.shape
        full[self.top : self.top + h, self.left : self.left + w] = self.written
        return full


def _dtype_max(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise TypeError(f"paste needs a uint8 or uint16 image, got {dtype}")


def paste_face(
    output: np.ndarray,
    face: np.ndarray,
    crop_mask: np.ndarray,
    output_to_crop: np.ndarray,
    strength: float = 1.0,
    colour_match: bool = True,
) -> PastedRegion | None:
    """Blend one crop-space `face` (float32 [0,1]) into `output` (HxWx3 uint8|uint16) IN PLACE.

    `output_to_crop` maps output pixel coordinates to crop coordinates. Returns where pixels were written
    (None when the face falls outside the image or strength is 0).
    """
    if strength <= 0.0:
        return None
    height, width = output.shape[:2]
    crop_size = face.shape[0]
    crop_to_output = invert(output_to_crop)
    x0, y0, x1, y1 = destination_footprint(crop_to_output, (crop_size, crop_size))
    left, top = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
    if right <= left or bottom <= top:
        return None
    to_roi = np.array([[1.0, 0.0, -left], [0.0, 1.0, -top]])
    crop_to_roi = compose(to_roi, crop_to_output)
    roi_size = (right - left, bottom - top)

    # Linear for the mask: it never overshoots, so pixels outside the face stay exactly 0.
    mask = warp_affine(crop_mask, crop_to_roi, roi_size, border_value=0.0, interpolation=cv2.INTER_LINEAR)
    mask *= np.float32(min(strength, 1.0))
    written = mask > 0.0
    if not written.any():
        return None
    scale = _dtype_max(output.dtype)
    region = output[top:bottom, left:right].astype(np.float32) / scale
    if colour_match:
        underneath = warp_affine(region, invert(crop_to_roi), (crop_size, crop_size), border_value=0.0)
        face = match_colour(face, underneath, crop_mask)
    warped_face = warp_affine(face, crop_to_roi, roi_size, border_value=0.0)
    m = mask[..., None]
    blended = region * (1.0 - m) + warped_face * m
    values = np.clip(np.rint(blended * scale), 0, scale).astype(output.dtype)
    output_region = output[top:bottom, left:right]
    output_region[written] = values[written]
    return PastedRegion(left, top, written)
