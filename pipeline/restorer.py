"""The pipeline's front door: an Image and RestoreOptions in, the restored Image and a RestoreReport out.

    restorer = Restorer(engine)             # loads nothing yet
    restorer.warm_up(options)               # load / compile the networks now (daemon: before READY)
    image, report = restorer.restore(image, options, on_progress)

Flow: pixels -> colour path (pipeline/colour.py: an RGB photo measured gray or toned goes on as its luma,
like a gray file) -> float RGB in [0,1] (gray replicated to 3 channels, alpha kept apart) -> faces.prepare
(detect + restore 512 crops on the input) -> tiled upscale by each model of the chain in turn (options.model:
each step with its own tile, on the previous step's output, written in the final dtype; the scales
multiply) -> alpha: a constant alpha is just filled in, any other alpha goes through the same network as
3 replicated channels (as the reference does) -> resize to the requested scale (INTER_AREA down, Lanczos
up) -> faces.paste into the output -> back to the input's mode (gray stays gray, 16-bit stays 16-bit; an RGB
photo restored as gray gets equal channels, a toned one its own tone back).

Upscalers are loaded once per (model, denoise strength) and kept (chains share them); restore() keeps no
per-image state on the object, so one Restorer serves a whole batch or a worker's lifetime.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.colour import ColourPlan, analyse_colour, gray_to_rgb, luma, toned_to_rgb
from pipeline.imageio import FORMAT_EXTENSIONS, encode_image, format_notes, load_image, output_format_for
from pipeline.options import RestoreOptions
from pipeline.progress import run_with_heartbeats, step_deadline
from pipeline.scratch import (
    STRIP_BYTES,
    DiskDecode,
    choose_assembly,
    disk_array,
    is_disk_backed,
    release_all,
    release_rows,
    row_strips,
    scratch_folder_of,
)
from pipeline.streaming import encode_to_file
from pipeline.tiling import (
    DEFAULT_BLEND,
    DEFAULT_PAD,
    Allocate,
    allocate_in_memory,
    tile_count,
    upscale_tiled,
)
from pipeline.types import (
    ColourMode,
    ColourReport,
    DeviceOutOfMemoryError,
    EngineConfig,
    FaceReport,
    Image,
    ProgressCallback,
    RestoredFile,
    RestoreError,
    RestoreReport,
    StepReport,
)

if TYPE_CHECKING:
    from pipeline.backends.base import Upscaler
    from pipeline.faces import FaceStage, PreparedFaces

log = logging.getLogger(__name__)

# (model id, engine, denoise strength) -> Upscaler; pipeline.backends.load_upscaler unless a test passes one.
UpscalerLoader = Callable[[str, EngineConfig, "float | None"], "Upscaler"]

GRAY_ALPHA_MODES = ("LA", "La")  # stored as RGBA with R=G=B, written back as LA


@dataclass
class _Planes:
    """The input split for the network: RGB float, optional alpha float, and how to put it back."""

    rgb: np.ndarray  # HxWx3 in the input dtype (a view for colour RGB(A); gray/luma is replicated)
    alpha: np.ndarray | None  # HxW in the input dtype (a view)
    gray: bool  # one luminance channel goes through the network (L/LA, or an RGB photo measured gray/toned)
    dtype: np.dtype
    colour: ColourPlan  # which colour path, why, and the tone to put back (pipeline/colour.py)
    stored_gray: bool = False  # the file is L or LA: output goes back to one colour channel


@dataclass
class _StageClock:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - started, 3)


class Restorer:
    def __init__(self, engine: EngineConfig, upscaler_loader: UpscalerLoader | None = None) -> None:
        """upscaler_loader(model_id, engine, denoise_strength) -> Upscaler; pipeline.backends' by default
        (tests pass a small numpy network here)."""
        self.engine = engine
        self._loader = upscaler_loader
        self._upscalers: dict[tuple[str, float | None], Upscaler] = {}
        self._face_stage: FaceStage | None = None
        self._face_unavailable: str | None = None

    # -- loading --------------------------------------------------------------------------------------------

    def upscaler(self, model_id: str, denoise_strength: float | None = None) -> Upscaler:
        key = (model_id, denoise_strength)
        if key not in self._upscalers:
            loader = self._loader
            if loader is None:
                from pipeline.backends import load_upscaler

                loader = load_upscaler
            self._upscalers[key] = loader(model_id, self.engine, denoise_strength)
        return self._upscalers[key]

    def chain(self, options: RestoreOptions) -> list[Upscaler]:
        """The upscalers of options.model, in the order they run."""
        return [self.upscaler(model_id, options.denoise_strength) for model_id in options.model]

    def face_stage(self) -> FaceStage | None:
        """The face stage, or None (with the reason kept) when the faces package cannot be imported."""
        if self._face_stage is None and self._face_unavailable is None:
            try:
                from pipeline.faces import FaceStage
            except ImportError as error:
                self._face_unavailable = f"face stage unavailable ({error}); faces not restored"
                return None
            self._face_stage = FaceStage(self.engine)
        return self._face_stage

    def warm_up(self, options: RestoreOptions) -> None:
        """Load (and, for OpenVINO, compile at the suggested tile shape) everything `options` needs."""
        for upscaler in self.chain(options):
            upscaler.warm_up()
        if options.faces:
            stage = self.face_stage()
            if stage is not None:
                stage.warm_up(options)

    # -- one image ------------------------------------------------------------------------------------------

    def restore(
        self, image: Image, options: RestoreOptions, on_progress: ProgressCallback | None = None
    ) -> tuple[Image, RestoreReport]:
        started = time.perf_counter()
        clock = _StageClock()
        report = RestoreReport(
            input_size=[image.width, image.height],
            input_mode=mode_label(image.pixels, image.original_mode),
            model=" + ".join(options.model),
            notes=list(image.notes),
        )
        stage_started = time.perf_counter()
        chain = self.chain(options)
        clock.add("load", stage_started)
        info = chain[0].info  # one engine runs every step
        report.backend, report.device, report.precision = info.backend, info.device, info.precision
        report.backend_reason = info.reason

        scale, size_note = output_scale(image.width, image.height, options)
        if size_note:
            report.notes.append(size_note)
        out_w, out_h = round(image.width * scale), round(image.height * scale)
        report.scale = round(scale, 4)

        stage_started = time.perf_counter()
        planes = split_planes(image, options.colour_mode)
        report.colour = planes.colour.report
        clock.add("colour", stage_started)  # measuring the colour path (and the luma copy when gray)
        scales = [int(upscaler.scale) for upscaler in chain]
        allocate = self._allocator(planes, scales, out_w, out_h, report)
        prepared = self._prepare_faces(planes, options, on_progress, clock, report)
        report.steps = [
            StepReport(model_id, scale) for model_id, scale in zip(options.model, scales, strict=True)
        ]
        try:
            colour, alpha = self._upscale(planes, chain, on_progress, clock, report, allocate)
        except DeviceOutOfMemoryError as error:
            raise RestoreError(f"out of memory: {error}") from None

        stage_started = time.perf_counter()
        colour = resize_to(colour, out_w, out_h, allocate)
        alpha = resize_to(alpha, out_w, out_h, allocate) if alpha is not None else None
        if (out_w, out_h) != (colour.shape[1], colour.shape[0]) or scale != math.prod(scales):
            clock.add("resize", stage_started)
        if prepared is not None:
            report.faces = self._paste_faces(colour, prepared, out_w / image.width, planes.gray, allocate)
            report.stage_seconds.update({k: round(v, 3) for k, v in prepared.seconds.items()})
            report.notes.extend(prepared.notes)
            if prepared.model is not None:
                seconds = sum(prepared.seconds.get(k, 0.0) for k in ("faces-restore", "faces-paste"))
                report.steps.append(StepReport(prepared.model, 1, seconds=round(seconds, 3), kind="face"))
        stage_started = time.perf_counter()
        rgb = colour_back(colour, planes, allocate)
        pixels = join_in_strips(rgb, alpha, planes.stored_gray, allocate)
        clock.add("colour", stage_started)
        output = Image(
            pixels=pixels,
            source_format=image.source_format,
            icc_profile=image.icc_profile,
            exif=image.exif,
            xmp=image.xmp,
            xmp_extended=image.xmp_extended,
            iptc=image.iptc,
            photoshop=image.photoshop,
            notes=list(report.notes),
            original_mode=image.original_mode,
        )
        output.notes.extend(format_notes(output, output_format_for(output, options.output_format)))
        report.notes = list(output.notes)
        report.output_size = [out_w, out_h]
        report.output_mode = mode_label(pixels, image.original_mode)
        report.stage_seconds.update(clock.seconds)
        report.seconds = round(time.perf_counter() - started, 3)
        return output, report

    def _allocator(
        self, planes: _Planes, scales: list[int], out_w: int, out_h: int, report: RestoreReport
    ) -> Allocate:
        """Memory for outputs that fit comfortably (today's path), else arrays on disk in the scratch
        folder (pipeline/scratch.py): chosen from the sizes this image's outputs will have and the
        memory this process can still use, cgroup limits included."""
        from pipeline.backends.base import available_ram_bytes

        alpha = 1 if planes.alpha is not None else 0
        network_channels = (1 if planes.gray else 3) + alpha
        final_channels = (1 if planes.stored_gray else 3) + alpha  # an RGB photo restored as gray: 3
        height, width = planes.rgb.shape[:2]
        network_scale = math.prod(scales)
        network_pixels = height * width * network_scale * network_scale
        resized = (out_w, out_h) != (width * network_scale, height * network_scale)
        final_pixels = out_w * out_h if resized or final_channels != network_channels else 0
        needed = network_pixels * network_channels + final_pixels * final_channels
        # A chain's steps before the last keep 3 channels (alpha: 3 more) of their own output size.
        step_scales = [math.prod(scales[: index + 1]) for index in range(len(scales) - 1)]
        needed += sum(height * width * s * s for s in step_scales) * 3 * (1 + alpha)
        needed *= planes.dtype.itemsize
        if choose_assembly(needed, available_ram_bytes()) == "memory":
            return allocate_in_memory
        scratch = Path(self.engine.scratch_dir or tempfile.gettempdir())
        report.notes.append(
            f"output assembled on disk in the scratch folder ({needed / 1e6:,.0f} MB): more than this "
            "worker keeps in memory"
        )
        return lambda shape, dtype: disk_array(shape, dtype, scratch)

    def _prepare_faces(
        self,
        planes: _Planes,
        options: RestoreOptions,
        on_progress: ProgressCallback | None,
        clock: _StageClock,
        report: RestoreReport,
    ) -> PreparedFaces | None:
        if not options.faces:
            return None
        stage = self.face_stage()
        if stage is None:
            report.notes.append(self._face_unavailable or "face stage unavailable")
            return None
        # The integer pixels: detection and alignment convert a band or a crop at a time (a float copy of
        # a 35 MP scan was 420 MB, and detection made a second).
        prepared = stage.prepare(planes.rgb, options, on_progress)
        release_all(planes.rgb)  # what detection and alignment read of a disk-backed input
        return prepared

    def _paste_faces(
        self,
        colour: np.ndarray,
        prepared: PreparedFaces,
        scale: float,
        gray: bool,
        allocate: Allocate = allocate_in_memory,
    ) -> list[FaceReport]:
        stage = self.face_stage()
        if not prepared.faces or stage is None:
            return []
        if not gray:
            reports = list(stage.paste(colour, prepared, scale))
            release_rows(colour, 0, colour.shape[0])  # the pasted regions of a disk-backed output
            return reports
        if not is_disk_backed(colour):
            rgb = np.repeat(colour[:, :, None], 3, axis=2)  # faces work in colour; gray gets the mean
            reports = list(stage.paste(rgb, prepared, scale))
            colour[:] = _mean_channels(rgb, colour.dtype)
            return reports
        # A disk-backed gray output: the colour copy the faces are pasted into is on disk too.
        rgb = allocate((*colour.shape, 3), colour.dtype)
        for first, last in row_strips(colour.shape[0], colour.strides[0] * 3):
            rgb[first:last] = colour[first:last, :, None]
            release_rows(rgb, first, last)
            release_rows(colour, first, last)
        reports = list(stage.paste(rgb, prepared, scale))
        for first, last in row_strips(colour.shape[0], colour.strides[0] * 3):
            colour[first:last] = _mean_channels(rgb[first:last], colour.dtype)
            release_rows(rgb, first, last)
            release_rows(colour, first, last)
        return reports

    def _upscale(
        self,
        planes: _Planes,
        chain: list[Upscaler],
        on_progress: ProgressCallback | None,
        clock: _StageClock,
        report: RestoreReport,
        allocate: Allocate = allocate_in_memory,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The colour (and alpha) planes through every model of the chain; progress counts the tiles of
        all steps as one "upscale" stage, so it only ever grows."""
        height, width = planes.rgb.shape[:2]
        # The backend owns each step's tile (memory, engine.tile, MIN_TILE); counted on that step's input.
        tiles = [int(upscaler.suggest_tile()) for upscaler in chain]
        counts, step_h, step_w = [], height, width
        for upscaler, tile in zip(chain, tiles, strict=True):
            scale = int(upscaler.scale)
            counts.append(tile_count(step_h, step_w, tile, DEFAULT_PAD, DEFAULT_BLEND, scale))
            step_h, step_w = step_h * scale, step_w * scale
        report.tile_size = tiles[0]
        for step, tile in zip(report.steps, tiles, strict=True):
            step.tile_size = tile
        colour_tiles = sum(counts)
        alpha_needs_network = planes.alpha is not None and not _is_constant(planes.alpha)
        run = _ChainRun(chain, tiles, counts, colour_tiles * (2 if alpha_needs_network else 1), on_progress)

        stage_started = time.perf_counter()
        colour = run.through(planes.rgb, planes.dtype, planes.gray, 0, report, allocate)
        clock.add("upscale", stage_started)
        if planes.alpha is None:
            return colour, None
        stage_started = time.perf_counter()
        scale = math.prod(int(upscaler.scale) for upscaler in chain)
        if not alpha_needs_network:
            alpha = allocate((height * scale, width * scale), planes.dtype)
            _fill_in_strips(alpha, planes.alpha.flat[0])
            report.notes.append("alpha is constant: filled in without the network")
        else:
            alpha_rgb = _replicated(planes.alpha)
            alpha = run.through(alpha_rgb, planes.dtype, True, colour_tiles, report, allocate)
            report.notes.append("alpha upscaled by the network (as 3 replicated channels)")
        clock.add("upscale-alpha", stage_started)
        return colour, alpha


@dataclass
class _ChainRun:
    """One image's pass through a chain of upscalers: each step tiles the previous step's output."""

    chain: list[Upscaler]
    tiles: list[int]  # each step's tile edge
    counts: list[int]  # each step's expected tiles (for progress)
    total: int  # tiles of the whole image: every step, colour and alpha
    on_progress: ProgressCallback | None

    def through(
        self,
        pixels: np.ndarray,
        dtype: np.dtype,
        gray: bool,
        done_before: int,
        report: RestoreReport,
        allocate: Allocate,
    ) -> np.ndarray:
        """`pixels` (HxWx3) through every step; gray: the last step writes one channel (the mean). Steps
        before the last keep three channels, the next step's input."""
        last = len(self.chain) - 1
        for index, (upscaler, tile, count) in enumerate(
            zip(self.chain, self.tiles, self.counts, strict=True)
        ):
            started = time.perf_counter()
            result = upscale_tiled(
                pixels,
                upscaler,
                tile,
                DEFAULT_PAD,
                dtype,
                self._progress(done_before, count),
                gray=gray and index == last,
                allocate=allocate,
            )
            pixels = result.pixels
            done_before += count
            step = report.steps[index]
            step.tiles += result.tiles
            step.seconds = round(step.seconds + time.perf_counter() - started, 3)
            report.tiles += result.tiles
            if result.oom_splits:
                report.notes.append(f"device out of memory: {result.oom_splits} tile(s) split and retried")
        return pixels

    def _progress(self, done_before: int, count: int) -> ProgressCallback:
        def report_tiles(stage: str, done: int, _total: int) -> None:
            if self.on_progress is not None:
                self.on_progress(stage, done_before + min(done, count), self.total)

        return report_tiles


def restore_bytes(
    restorer: Restorer,
    data: bytes,
    options: RestoreOptions,
    *,
    max_pixels: int,
    on_progress: ProgressCallback | None = None,
) -> RestoredFile:
    """One file end to end: decode -> restore -> encode, the path the daemon, `restorer restore`, bench
    and the Ray actor all take. Raises BadImageError subclasses for bad input, RestoreError otherwise."""
    # Decode and encode are single blocking calls: heartbeats keep a slow one from looking hung.
    _report_progress(on_progress, "decode", 0, 1)
    scratch = decode_scratch(restorer.engine)
    image = run_with_heartbeats(
        lambda: load_image(data, max_pixels=max_pixels, scratch=scratch),
        on_progress,
        "decode",
        step_deadline(max_pixels),
    )
    _report_progress(on_progress, "decode", 1, 1)
    restored, report = restorer.restore(image, options, on_progress)
    fmt = output_format_for(image, options.output_format)
    del image  # the input's pixels are not needed to encode
    _report_progress(on_progress, "encode", 0, 1)
    if is_disk_backed(restored.pixels):
        # Assembled on disk: encoded a strip at a time into an unlinked file beside it.
        scratch_dir = Path(restorer.engine.scratch_dir or tempfile.gettempdir())
        output = tempfile.TemporaryFile(dir=scratch_dir, prefix="encoded-")  # noqa: SIM115 (handed on)
        try:
            run_with_heartbeats(
                lambda: encode_to_file(
                    restored, fmt, output, quality=options.quality, strip_gps=options.strip_gps
                ),
                on_progress,
                "encode",
                step_deadline(restored.width * restored.height),
            )
            output.flush()
        except BaseException:
            output.close()
            raise
        _report_progress(on_progress, "encode", 1, 1)
        extension = FORMAT_EXTENSIONS[fmt]
        return RestoredFile(data=b"", format=fmt, extension=extension, report=report, file=output)
    encoded = run_with_heartbeats(
        lambda: encode_image(restored, fmt, quality=options.quality, strip_gps=options.strip_gps),
        on_progress,
        "encode",
        step_deadline(restored.width * restored.height),
    )
    _report_progress(on_progress, "encode", 1, 1)
    return RestoredFile(data=encoded, format=fmt, extension=FORMAT_EXTENSIONS[fmt], report=report)


def decode_scratch(engine: EngineConfig) -> DiskDecode:
    """Where restore_bytes decodes an input too large for this process's memory: the scratch folder,
    chosen by the memory this process can still use now (cgroup limits included), as outputs are."""
    from pipeline.backends.base import available_ram_bytes

    return DiskDecode(Path(engine.scratch_dir or tempfile.gettempdir()), available_ram_bytes())


def _report_progress(on_progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if on_progress is not None:
        on_progress(stage, done, total)


# -- pure helpers (tested directly) ------------------------------------------------------------------------


def mode_label(pixels: np.ndarray, original_mode: str = "") -> str:
    """'RGB 8-bit', 'RGBA 16-bit', 'L 8-bit', 'LA 16-bit'."""
    bits = 16 if pixels.dtype == np.uint16 else 8
    channels = 1 if pixels.ndim == 2 else int(pixels.shape[2])
    if channels == 1:
        mode = "L"
    elif channels == 4:
        mode = "LA" if original_mode in GRAY_ALPHA_MODES else "RGBA"
    else:
        mode = "RGB"
    return f"{mode} {bits}-bit"


def output_scale(width: int, height: int, options: RestoreOptions) -> tuple[float, str | None]:
    """The scale to apply after the max_output_megapixels cap, and a note when the cap lowered it."""
    scale = float(options.scale)
    cap = options.max_output_megapixels
    if cap is None or width * height * scale * scale <= cap * 1e6:
        return scale, None
    capped = max(1.0, math.sqrt(cap * 1e6 / (width * height)))
    capped = math.floor(capped * 1000) / 1000  # never round above the cap
    note = (
        f"scale lowered from {scale:g}x to {capped:g}x to stay under max_output_megapixels={cap:g} "
        f"({round(width * capped)}x{round(height * capped)})"
    )
    if capped <= 1.0 and width * height > cap * 1e6:
        note = f"input already exceeds max_output_megapixels={cap:g}: written at 1x"
    return capped, note


def split_planes(image: Image, colour_mode: ColourMode = "auto") -> _Planes:
    pixels = image.pixels
    stored_gray = pixels.ndim == 2 or (pixels.shape[2] == 4 and image.original_mode in GRAY_ALPHA_MODES)
    alpha = pixels[:, :, 3] if pixels.ndim == 3 and pixels.shape[2] == 4 else None
    if stored_gray:
        plan = ColourPlan(ColourReport("gray", f"stored as grayscale ({image.original_mode or 'L'})"))
        colour = np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[:, :, :3]
    else:
        plan = analyse_colour(pixels[:, :, :3], alpha, colour_mode)
        release_all(pixels)  # the measured sample of a disk-backed input (pipeline/disk_decode.py)
        colour = _gray_as_rgb(pixels) if plan.as_gray else pixels[:, :, :3]
    # No float copy of the whole image: the tiler converts one window at a time.
    return _Planes(colour, alpha, stored_gray or plan.as_gray, pixels.dtype, plan, stored_gray)


def _gray_as_rgb(pixels: np.ndarray) -> np.ndarray:
    """The network's input for the gray path: luma replicated to 3 channels; for a disk-backed input, into
    an array beside it, a strip at a time (a 200 MP scan's gray copy was 600 MB in memory)."""
    if not is_disk_backed(pixels):
        return gray_to_rgb(luma(pixels))
    rgb = disk_array((*pixels.shape[:2], 3), pixels.dtype, scratch_folder_of(pixels))
    for first, last in row_strips(pixels.shape[0], pixels.strides[0]):
        rgb[first:last] = luma(pixels[first:last])[:, :, None]
        release_rows(pixels, first, last)
        release_rows(rgb, first, last)
    return rgb


def _replicated(plane: np.ndarray) -> np.ndarray:
    """HxW -> HxWx3 (alpha through the network as RGB): on disk beside a disk-backed plane."""
    if not is_disk_backed(plane):
        return np.repeat(plane[:, :, None], 3, axis=2)
    rgb = disk_array((*plane.shape, 3), plane.dtype, scratch_folder_of(plane))
    for first, last in row_strips(plane.shape[0], plane.shape[1] * 3 * plane.itemsize):
        rgb[first:last] = plane[first:last, :, None]
        release_all(plane)  # a channel of an RGBA mapping: its rows' pages, not this slice's rows
        release_rows(rgb, first, last)
    return rgb


def colour_back(colour: np.ndarray, planes: _Planes, allocate: Allocate = allocate_in_memory) -> np.ndarray:
    """An RGB photo restored as gray back to RGB: equal channels (gray) or its own tone (toned). A
    disk-backed plane goes into an array from `allocate`, a strip at a time."""
    if not planes.gray or planes.stored_gray:
        return colour
    out = allocate((*colour.shape, 3), colour.dtype) if is_disk_backed(colour) else None
    if planes.colour.tone is None:
        return gray_to_rgb(colour, out)
    return toned_to_rgb(colour, planes.colour.tone, out)


def join_planes(colour: np.ndarray, alpha: np.ndarray | None, gray: bool) -> np.ndarray:
    """Back to the input's layout: HxW gray, HxWx3 RGB, or HxWx4 (gray+alpha is stored as RGBA)."""
    if gray and alpha is None:
        return colour
    if gray:
        colour = np.repeat(colour[:, :, None], 3, axis=2)
    if alpha is None:
        return colour
    return np.dstack([colour, alpha])


def resize_to(
    pixels: np.ndarray, width: int, height: int, allocate: Allocate = allocate_in_memory
) -> np.ndarray:
    """High-quality resize to exactly width x height: INTER_AREA when shrinking, Lanczos when enlarging.

    A disk-backed image is resized in strips into a new array from `allocate`, with the same pixels as
    the whole-image resize (see _resize_in_strips)."""
    if pixels.shape[1] == width and pixels.shape[0] == height:
        return pixels
    shrinking = width * height < pixels.shape[1] * pixels.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    if is_disk_backed(pixels):
        resized = _resize_in_strips(pixels, width, height, interpolation, allocate)
        if resized is not None:
            return resized
    return cv2.resize(pixels, (width, height), interpolation=interpolation)


def _resize_in_strips(
    pixels: np.ndarray, width: int, height: int, interpolation: int, allocate: Allocate
) -> np.ndarray | None:
    """cv2.resize one band of rows at a time, exactly as the whole image: each band is resized by the
    whole image's ratios (fx, fy, so OpenCV maps coordinates as for the whole), starts on a row where
    that ratio gives a whole output row, and carries a margin of rows on both sides for the filter's
    reach, which is cut off again. None when no such rows exist often enough (a ratio whose reduced
    denominator is huge, e.g. after max_output_megapixels): the caller then resizes whole, in memory."""
    ratio = Fraction(height, pixels.shape[0])
    step = ratio.denominator  # source rows between rows that map onto whole output rows
    row_bytes = pixels.strides[0]
    if step * row_bytes * 4 > STRIP_BYTES * 8:
        return None
    reach = 8 + math.ceil(pixels.shape[0] / height)  # Lanczos4's 8 taps, or one output row's area
    margin = -(-reach // step) * step
    fx, fy = width / pixels.shape[1], height / pixels.shape[0]
    resized = allocate((height, width, *pixels.shape[2:]), pixels.dtype)
    for first, last in row_strips(pixels.shape[0], row_bytes, step):
        top, bottom = max(0, first - margin), min(pixels.shape[0], last + margin)
        band = cv2.resize(pixels[top:bottom], None, fx=fx, fy=fy, interpolation=interpolation)
        out_first, out_last = int(first * ratio), int(last * ratio) if last < pixels.shape[0] else height
        skip = out_first - int(top * ratio)
        resized[out_first:out_last] = band[skip : skip + out_last - out_first]
        release_rows(pixels, top, first)
        release_rows(resized, out_first, out_last)
    release_rows(pixels, 0, pixels.shape[0])
    return resized


def join_in_strips(
    colour: np.ndarray, alpha: np.ndarray | None, gray: bool, allocate: Allocate = allocate_in_memory
) -> np.ndarray:
    """join_planes, a strip at a time into an array from `allocate` when the planes are disk-backed."""
    if not is_disk_backed(colour):
        return join_planes(colour, alpha, gray)
    if alpha is None:
        return colour  # join_planes would return it as it is
    joined: np.ndarray | None = None
    for first, last in row_strips(colour.shape[0], colour.strides[0] * 2):
        part = join_planes(colour[first:last], _rows(alpha, first, last), gray)
        if joined is None:
            joined = allocate((colour.shape[0], *part.shape[1:]), part.dtype)
        joined[first:last] = part
        for plane in (colour, alpha, joined):
            if plane is not None:
                release_rows(plane, first, last)
    assert joined is not None
    return joined


def _rows(plane: np.ndarray | None, first: int, last: int) -> np.ndarray | None:
    return None if plane is None else plane[first:last]


def _fill_in_strips(plane: np.ndarray, value: object) -> None:
    for first, last in row_strips(plane.shape[0], plane.strides[0]):
        plane[first:last] = value
        release_rows(plane, first, last)


def _is_constant(plane: np.ndarray) -> bool:
    if not is_disk_backed(plane):
        return bool(plane.min() == plane.max())
    first_value = plane.flat[0]
    for first, last in row_strips(plane.shape[0], plane.strides[0]):
        rows = plane[first:last]
        same = bool((rows == first_value).all())
        release_all(plane)
        if not same:
            return False
    return True


def _mean_channels(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.clip(rgb.mean(axis=2) + 0.5, 0, np.iinfo(dtype).max).astype(dtype)
