"""MTCNN face detection on OpenVINO: facenet-pytorch's P/R/O-nets (MIT, weights inside its wheel), converted
once to IR (pipeline/backends/ir.py, in the converter process), and facenet-pytorch's detection pipeline
rewritten in numpy: image pyramid -> P-net proposals -> R-net refinement -> O-net boxes and landmarks, with
the same resampling (torch's "area" interpolation = adaptive average pooling), the same box arithmetic and
the same non-maximum suppression, so boxes and landmarks agree with facenet-pytorch's MTCNN to a fraction of
a pixel (tests/test_faces_detect.py). No torch at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.ir import (
    Conversion,
    compile_ir,
    convert_in_subprocess,
    ir_dir,
    new_core,
    read_network,
    register_converter,
    save_ir,
    torch_to_ov,
)
from pipeline.files import file_sha256

if TYPE_CHECKING:
    import openvino as ov

    from pipeline.faces.detect import DetectedFace

# facenet-pytorch's defaults, as MtcnnDetector used them (min_face_size=20).
MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709
NETS = ("pnet", "rnet", "onet")
# Example input and the input shape kept free in the IR: P-net is fully convolutional (any size);
# R-net and O-net take a batch of 24x24 / 48x48 crops.
_SHAPES = {
    "pnet": ([1, 3, 48, 48], [-1, 3, -1, -1]),
    "rnet": ([1, 3, 24, 24], [-1, 3, 24, 24]),
    "onet": ([1, 3, 48, 48], [-1, 3, 48, 48]),
}


def facenet_weights() -> dict[str, Path]:
    """The three .pt files inside the facenet-pytorch wheel, found without importing it (it imports torch)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("facenet-pytorch (the MTCNN weights) is not installed")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return {net: data / f"{net}.pt" for net in NETS}


def mtcnn_xmls(cache_dir: Path) -> dict[str, Path]:
    """Each net's IR, named by the sha256 of its weights file."""
    return {
        net: ir_dir(cache_dir) / f"mtcnn-{net}-{file_sha256(path)[:16]}.xml"
        for net, path in facenet_weights().items()
    }


def convert_mtcnn(cache_dir: Path) -> None:
    """Converter process only (imports torch and facenet-pytorch)."""
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    classes = {"pnet": PNet, "rnet": RNet, "onet": ONet}
    for net, xml in mtcnn_xmls(cache_dir).items():
        module = classes[net](pretrained=True).eval()
        example, free = _SHAPES[net]
        model = torch_to_ov(module, example, free, trace=False)
        save_ir(model, xml, {"architecture": "MTCNN", "scale": 1, "size_multiple": 1})


class MtcnnOpenVinoDetector:
    name = "MTCNN (facenet-pytorch weights on OpenVINO)"

    def __init__(self, cache_dir: Path, threads: int) -> None:
        from pipeline.prebuilt import seed_cache

        seed_cache(cache_dir)  # a torch-free installation ships these nets converted
        xmls = mtcnn_xmls(cache_dir)
        if any(read_network(xml) is None for xml in xmls.values()):
            convert_in_subprocess(Conversion("mtcnn", cache_dir=str(cache_dir), module=__name__))
        core = new_core(cache_dir)
        # fp32: the nets are tiny (~0.5 MFLOP per 12x12 window) and scores decide what counts as a face.
        self._nets = {net: compile_ir(core, xml, "fp32", threads) for net, xml in xmls.items()}

    def __call__(self, rgb: np.ndarray) -> list[DetectedFace]:
        from pipeline.faces.detect import DetectedFace, face_box

        boxes, landmarks = detect(rgb, self._nets)
        return [
            DetectedFace(box=face_box(box), score=float(box[4]), landmarks=points)
            for box, points in zip(boxes, landmarks, strict=True)
        ]


# -- the pipeline, step for step as facenet-pytorch's detect_face ------------------------------------------


def detect(rgb: np.ndarray, nets: dict[str, ov.CompiledModel]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 5: x0, y0, x1, y1, score) and landmarks (N, 5, 2) in an HxWx3 uint8 RGB image."""
    image = np.ascontiguousarray(rgb)  # uint8: area_resize converts one channel at a time (3 MP: 24 MB)
    boxes = _propose(image, nets["pnet"])
    if len(boxes):
        boxes = _refine(image, boxes, nets["rnet"])
    if not len(boxes):
        return np.zeros((0, 5)), np.zeros((0, 5, 2))
    return _output(image, boxes, nets["onet"])


def pyramid_scales(height: int, width: int, min_face: int = MIN_FACE_SIZE) -> list[float]:
    scale = 12.0 / min_face
    smallest = min(height, width) * scale
    scales = []
    while smallest >= 12:
        scales.append(scale)
        scale *= PYRAMID_FACTOR
        smallest *= PYRAMID_FACTOR
    return scales


def _propose(image: np.ndarray, pnet: ov.CompiledModel) -> np.ndarray:
    """Stage 1: P-net over the pyramid; NMS per scale (0.5), then across scales (0.7); regressed, squared."""
    height, width = image.shape[:2]
    found = []
    for scale in pyramid_scales(height, width):
        scaled = area_resize(image, int(height * scale + 1), int(width * scale + 1))
        regression, probabilities = _run(pnet, _normalise(scaled)[None])
        candidates = _candidates(regression[0], probabilities[0, 1], scale, THRESHOLDS[0])
        found.append(candidates[nms(candidates[:, :4], candidates[:, 4], 0.5)])
    boxes = np.concatenate(found) if found else np.zeros((0, 9))
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    refined = np.stack(
        [
            boxes[:, 0] + boxes[:, 5] * widths,
            boxes[:, 1] + boxes[:, 6] * heights,
            boxes[:, 2] + boxes[:, 7] * widths,
            boxes[:, 3] + boxes[:, 8] * heights,
            boxes[:, 4],
        ],
        axis=1,
    )
    return square(refined)


def _refine(image: np.ndarray, boxes: np.ndarray, rnet: ov.CompiledModel) -> np.ndarray:
    """Stage 2: R-net on 24x24 crops; keep scores > 0.7; NMS 0.7; regress; square."""
    crops, boxes = _crops(image, boxes, 24)
    if not len(boxes):
        return boxes
    regression, probabilities = _run(rnet, crops)
    keep = probabilities[:, 1] > THRESHOLDS[1]
    boxes = np.concatenate([boxes[keep, :4], probabilities[keep, 1:2]], axis=1)
    regression = regression[keep]
    picked = nms(boxes[:, :4], boxes[:, 4], 0.7)
    return square(regress(boxes[picked], regression[picked]))


def _output(image: np.ndarray, boxes: np.ndarray, onet: ov.CompiledModel) -> tuple[np.ndarray, np.ndarray]:
    """Stage 3: O-net on 48x48 crops: final scores, landmarks, regression; NMS 0.7 by the smaller area."""
    crops, boxes = _crops(image, boxes, 48)
    if not len(boxes):
        return np.zeros((0, 5)), np.zeros((0, 5, 2))
    regression, points, probabilities = _run(onet, crops)
    keep = probabilities[:, 1] > THRESHOLDS[2]
    boxes = np.concatenate([boxes[keep, :4], probabilities[keep, 1:2]], axis=1)
    points, regression = points[keep], regression[keep]
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    xs = widths[:, None] * points[:, :5] + boxes[:, 0:1] - 1
    ys = heights[:, None] * points[:, 5:10] + boxes[:, 1:2] - 1
    landmarks = np.stack([xs, ys], axis=2)
    boxes = regress(boxes, regression)
    picked = nms(boxes[:, :4], boxes[:, 4], 0.7, by_smaller_area=True)
    return boxes[picked], landmarks[picked]


def _run(net: ov.CompiledModel, batch: np.ndarray) -> list[np.ndarray]:
    request = net.create_infer_request()
    request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
    return [np.array(request.get_output_tensor(i).data, dtype=np.float64) for i in range(len(net.outputs))]


def _normalise(hwc: np.ndarray) -> np.ndarray:
    return ((hwc - 127.5) * 0.0078125).transpose(2, 0, 1)


def _candidates(regression: np.ndarray, faceness: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """P-net cells above the threshold as boxes in image coordinates: (x0, y0, x1, y1, score, 4 offsets).
    A cell at (x, y) of the 2-strided output sees the 12x12 window at (2x, 2y) of the scaled image."""
    ys, xs = np.nonzero(faceness >= threshold)  # row-major, as torch's nonzero
    cells = np.stack([xs, ys], axis=1).astype(np.float64)
    top_left = np.floor((2 * cells + 1) / scale)
    bottom_right = np.floor((2 * cells + 12) / scale)
    offsets = regression[:, ys, xs].T
    return np.concatenate([top_left, bottom_right, faceness[ys, xs][:, None], offsets], axis=1)


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box's pixels, clipped to the image (1-based corners, as facenet-pytorch), resized to size x
    size; boxes that clip to nothing are dropped (with their crops)."""
    height, width = image.shape[:2]
    corners = np.trunc(boxes[:, :4]).astype(np.int64)
    x0, y0 = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
    x1, y1 = np.minimum(corners[:, 2], width), np.minimum(corners[:, 3], height)
    valid = (y1 > y0 - 1) & (x1 > x0 - 1)
    crops = [
        _normalise(area_resize(image[y0[i] - 1 : y1[i], x0[i] - 1 : x1[i]], size, size))
        for i in np.flatnonzero(valid)
    ]
    batch = np.stack(crops) if crops else np.zeros((0, 3, size, size))
    return batch, boxes[valid]


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="area"), i.e. adaptive average pooling: output pixel i averages
    input pixels floor(i*n/m) .. ceil((i+1)*n/m) - 1, along each axis (separable, through cumulative sums).
    HxWxC in (any dtype), float64 out; one channel at a time, so a large photo costs little memory."""
    out = np.empty((height, width, image.shape[2]), np.float64)
    for channel in range(image.shape[2]):
        out[:, :, channel] = _area_axis(_area_axis(image[:, :, channel], height, axis=0), width, axis=1)
    return out


def _area_axis(plane: np.ndarray, size: int, axis: int) -> np.ndarray:
    length = plane.shape[axis]
    index = np.arange(size)
    starts = (index * length) // size
    ends = -((-(index + 1) * length) // size)  # ceil
    shape = list(plane.shape)
    shape[axis] += 1
    sums = np.zeros(shape, np.float64)  # sums[k] = sum of the first k pixels along the axis
    np.cumsum(plane, axis=axis, dtype=np.float64, out=sums[1:] if axis == 0 else sums[:, 1:])
    counts = (ends - starts).astype(np.float64)
    counts = counts[:, None] if axis == 0 else counts[None, :]
    return (np.take(sums, ends, axis=axis) - np.take(sums, starts, axis=axis)) / counts


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_smaller_area: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first. Overlap is IoU with areas w*h
    (torchvision's nms, used by facenet-pytorch in stages 1-2), or with by_smaller_area the intersection
    over the smaller box with areas (w+1)*(h+1) (its numpy "Min" variant, used in stage 3)."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    extra = 1.0 if by_smaller_area else 0.0
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x1 - x0 + extra) * (y1 - y0 + extra)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while len(order):
        best, rest = order[0], order[1:]
        kept.append(best)
        overlap_w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + extra)
        overlap_h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + extra)
        inter = overlap_w * overlap_h
        if by_smaller_area:
            overlap = inter / np.minimum(areas[best], areas[rest])
        else:
            overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(kept, dtype=np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each corner by its offset times the box's (inclusive) width or height."""
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    moved = boxes.copy()
    moved[:, 0] += offsets[:, 0] * widths
    moved[:, 1] += offsets[:, 1] * heights
    moved[:, 2] += offsets[:, 2] * widths
    moved[:, 3] += offsets[:, 3] * heights
    return moved


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square around its centre (the longer side)."""
    squared = boxes.copy()
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(widths, heights)
    squared[:, 0] = boxes[:, 0] + widths * 0.5 - side * 0.5
    squared[:, 1] = boxes[:, 1] + heights * 0.5 - side * 0.5
    squared[:, 2] = squared[:, 0] + side
    squared[:, 3] = squared[:, 1] + side
    return squared


register_converter("mtcnn", lambda job: convert_mtcnn(Path(job.cache_dir)))
