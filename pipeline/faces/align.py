"""Face alignment: five landmarks -> similarity transform onto the FFHQ 512x512 template, and back.

Coordinates follow OpenCV: pixel (i, j) has its centre at (x=j, y=i). Matrices are 2x3 affine maps
`dst = M @ [x, y, 1]`. Pure numpy/OpenCV, no torch.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.tiling import as_float

CROP_SIZE = 512

# Where GFPGAN/CodeFormer/RestoreFormer expect the five landmarks in their 512x512 input (FFHQ alignment,
# the values facexlib uses): left eye, right eye, nose tip, left mouth corner, right mouth corner.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)

# Shrinking by more than this factor gets a Gaussian pre-blur in warp_affine.
ANTIALIAS_BELOW = 0.5

# Grey the reference fills outside the source image with; the paste mask never uses those pixels.
_CROP_BORDER_VALUE = (135 / 255, 133 / 255, 132 / 255)


def similarity_to_template(landmarks: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking `landmarks` to the template.

    Closed form (Umeyama) over all five points: deterministic, unlike a RANSAC/LMEDS estimate.
    """
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = FFHQ_TEMPLATE_512 * (crop_size / CROP_SIZE)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    # As complex numbers a similarity is dst = z * src: z = sum(conj(src) * dst) / sum(|src|^2).
    src_z = src_c[:, 0] + 1j * src_c[:, 1]
    dst_z = dst_c[:, 0] + 1j * dst_c[:, 1]
    denominator = float(np.sum(np.abs(src_z) ** 2))
    if denominator < 1e-9:
        raise ValueError("degenerate landmarks: all five points coincide")
    z = np.sum(np.conj(src_z) * dst_z) / denominator
    a, b = float(z.real), float(z.imag)
    linear = np.array([[a, -b], [b, a]])
    translation = dst_mean - linear @ src_mean
    return np.hstack([linear, translation[:, None]])


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def rescale_source(matrix: np.ndarray, scale: float) -> np.ndarray:
    """The same map for a source image resized by `scale` (pixel-centre convention, as cv2.resize)."""
    linear, translation = matrix[:, :2], matrix[:, 2]
    # x_old = (x_new + 0.5) / scale - 0.5
    new_linear = linear / scale
    new_translation = translation + linear @ np.full(2, 0.5 / scale - 0.5)
    return np.hstack([new_linear, new_translation[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine map x -> outer(inner(x))."""
    linear = outer[:, :2] @ inner[:, :2]
    translation = outer[:, :2] @ inner[:, 2] + outer[:, 2]
    return np.hstack([linear, translation[:, None]])


def matrix_scale(matrix: np.ndarray) -> float:
    """Linear size factor of an affine map (destination pixels per source pixel)."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def destination_footprint(matrix: np.ndarray, source_size: tuple[int, int]) -> tuple[float, ...]:
    """Bounding box (x0, y0, x1, y1) in destination coordinates of a source of (width, height)."""
    w, h = source_size
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    mapped = transform_points(matrix, corners)
    return (*mapped.min(axis=0), *mapped.max(axis=0))


def warp_affine(
    source: np.ndarray,
    matrix: np.ndarray,
    dsize: tuple[int, int],
    border_value: float | tuple[float, ...] = 0.0,
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """cv2.warpAffine that reads only the source region it needs and does not alias badly when shrinking.

    dsize is (width, height). Cubic by default: aligning a face and pasting it back unchanged then costs
    ~0.3/255 on average. When the map shrinks by more than 2x, the source is first blurred just enough
    for a 2x shrink to be alias-free (a full anti-alias filter would blur restored detail away).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    dst_w, dst_h = dsize
    src_h, src_w = source.shape[:2]
    x0, y0, x1, y1 = destination_footprint(invert(matrix), (dst_w, dst_h))
    left, top = max(int(np.floor(x0)) - 2, 0), max(int(np.floor(y0)) - 2, 0)
    right, bottom = min(int(np.ceil(x1)) + 3, src_w), min(int(np.ceil(y1)) + 3, src_h)
    channels = 1 if source.ndim == 2 else source.shape[2]
    # An integer source (a face crop from the uint8/uint16 input) is read as float [0,1], only the region
    # the warp needs: a whole-image float copy of a 100 MP scan would be 1.2 GB.
    dtype = np.float32 if source.dtype.kind == "u" else source.dtype
    if right <= left or bottom <= top:
        fill = np.broadcast_to(np.asarray(border_value, dtype=np.float32), (channels,))
        out = np.empty((dst_h, dst_w, channels), dtype=dtype)
        out[...] = fill
        return out[..., 0] if source.ndim == 2 else out
    region = source[top:bottom, left:right]
    if source.dtype.kind == "u":
        region = as_float(region)
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([left, top], dtype=np.float64)
    shrink = matrix_scale(shifted)
    if shrink < ANTIALIAS_BELOW:
        sigma = 0.5 * np.sqrt((ANTIALIAS_BELOW / shrink) ** 2 - 1.0)
        region = cv2.GaussianBlur(region, (0, 0), sigma)
    if isinstance(border_value, tuple):
        border: tuple[float, ...] = border_value
    else:
        border = (float(border_value),) * 4
    return cv2.warpAffine(
        np.ascontiguousarray(region),
        shifted,
        (dst_w, dst_h),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border,
    )


def align_face(rgb: np.ndarray, matrix: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """The aligned crop (crop_size^2 x 3, float32 [0,1]) of an RGB image (float32 [0,1] or uint8/16)."""
    crop = warp_affine(rgb, matrix, (crop_size, crop_size), border_value=_CROP_BORDER_VALUE)
    return np.clip(crop, 0.0, 1.0).astype(np.float32, copy=False)


def valid_crop_region(
    matrix: np.ndarray, source_size: tuple[int, int], crop_size: int = CROP_SIZE
) -> np.ndarray:
    """Boolean crop_size^2 mask of crop pixels whose source lies inside the source image (width, height)."""
    w, h = source_size
    ys, xs = np.mgrid[0:crop_size, 0:crop_size].astype(np.float64)
    back = invert(matrix)
    src_x = back[0, 0] * xs + back[0, 1] * ys + back[0, 2]
    src_y = back[1, 0] * xs + back[1, 1] * ys + back[1, 2]
    return (src_x >= -0.5) & (src_x <= w - 0.5) & (src_y >= -0.5) & (src_y <= h - 0.5)
