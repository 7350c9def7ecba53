"""Evaluation and benchmark code: metrics against known values, reproducible degradations, cost
arithmetic, and tiny end-to-end `restorer eval` / `restorer bench` runs on the real cheap model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image as PILImage
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from pipeline.evaluation import bench, costs, degrade, evaluate, metrics


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


# --- Y channel ------------------------------------------------------------------------------------------


def test_y_channel_of_black_white_and_primaries_follows_bt601() -> None:
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    y = metrics.rgb_to_y(pixels)[0]
    assert y == pytest.approx([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], abs=1e-9)


def test_y_channel_of_gray_image_equals_replicated_rgb() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(metrics.rgb_to_y(gray), metrics.rgb_to_y(np.dstack([gray] * 3)))


def test_y_channel_of_16_bit_image_uses_the_8_bit_scale() -> None:
    pixels16 = np.full((2, 2, 3), 65535, dtype=np.uint16)
    assert metrics.rgb_to_y(pixels16) == pytest.approx(np.full((2, 2), 235.0))


# --- PSNR -----------------------------------------------------------------------------------------------


def test_psnr_of_uniform_offset_is_the_closed_form() -> None:
    base = np.full((32, 32), 100.0)
    # MSE = 5^2 -> 10 log10(255^2 / 25) = 34.1514 dB
    assert metrics.psnr(base, base + 5) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-9)


def test_psnr_y_of_uniform_rgb_offset_scales_by_219_over_255(astronaut: np.ndarray) -> None:
    image = np.clip(astronaut, 10, 200)  # no clipping when we add 20 below
    shifted = image + np.uint8(20)
    y_offset = 20 * 219 / 255
    expected = 10 * math.log10(255**2 / y_offset**2)
    assert metrics.psnr_y(image, shifted, border=4) == pytest.approx(expected, abs=1e-6)


def test_psnr_of_identical_images_is_infinite(astronaut: np.ndarray) -> None:
    assert metrics.psnr_y(astronaut, astronaut.copy(), border=4) == math.inf


def test_border_crop_ignores_differences_in_the_border(astronaut: np.ndarray) -> None:
    damaged = astronaut.copy()
    damaged[:4] = 0
    damaged[:, -4:] = 255
    assert metrics.psnr_y(astronaut, damaged, border=4) == math.inf
    assert metrics.psnr_y(astronaut, damaged, border=3) < 30


def test_psnr_matches_scikit_image_on_a_random_perturbation(astronaut: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    noisy = np.clip(astronaut.astype(int) + rng.integers(-12, 13, astronaut.shape), 0, 255).astype(np.uint8)
    assert metrics.psnr(astronaut, noisy) == pytest.approx(sk_psnr(astronaut, noisy), abs=1e-9)


def test_psnr_rejects_images_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(np.zeros((4, 4)), np.zeros((4, 5)))


# --- SSIM -----------------------------------------------------------------------------------------------


def test_ssim_of_an_image_with_itself_is_one(astronaut: np.ndarray) -> None:
    assert metrics.ssim_y(astronaut, astronaut, border=4) == pytest.approx(1.0, abs=1e-12)


def test_ssim_is_symmetric(astronaut: np.ndarray) -> None:
    blurred = cv2.GaussianBlur(astronaut, (5, 5), 1.5)
    assert metrics.ssim_y(astronaut, blurred, 4) == pytest.approx(metrics.ssim_y(blurred, astronaut, 4))


def test_ssim_of_two_flat_images_is_the_luminance_term() -> None:
    a, b = 100.0, 150.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # no variance: contrast/structure terms are 1
    assert metrics.ssim(np.full((32, 32), a), np.full((32, 32), b)) == pytest.approx(expected, abs=1e-9)


def test_ssim_matches_scikit_image_gaussian_wang_settings(astronaut: np.ndarray) -> None:
    degraded = cv2.GaussianBlur(astronaut, (7, 7), 2.0)
    y_ref, y_test = metrics.rgb_to_y(astronaut), metrics.rgb_to_y(degraded)
    expected = sk_ssim(
        y_ref, y_test, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert metrics.ssim(y_ref, y_test) == pytest.approx(expected, abs=1e-9)


def test_ssim_drops_for_a_blurred_image(astronaut: np.ndarray) -> None:
    blurred = cv2.GaussianBlur(astronaut, (9, 9), 3.0)
    assert metrics.ssim_y(astronaut, blurred, 4) < 0.8


# --- The seed's consistency measure ---------------------------------------------------------------------


def test_seed_consistency_reproduces_the_seed_method_with_scikit_image(astronaut: np.ndarray) -> None:
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    output = cv2.GaussianBlur(cv2.resize(astronaut, (512, 512)), (3, 3), 1.0)
    # The seed: cv2 INTER_CUBIC upscale of the input, skimage psnr on all channels, skimage default ssim
    # on the gray conversion. (Channel order does not matter for PSNR; RGB2GRAY on RGB == BGR2GRAY on BGR.)
    upscaled = cv2.resize(small, (512, 512), interpolation=cv2.INTER_CUBIC)
    expected_psnr = sk_psnr(upscaled, output)
    expected_ssim = sk_ssim(
        cv2.cvtColor(upscaled, cv2.COLOR_RGB2GRAY), cv2.cvtColor(output, cv2.COLOR_RGB2GRAY)
    )
    result = metrics.seed_consistency(small, output)
    assert result.psnr == pytest.approx(expected_psnr, abs=1e-9)
    assert result.ssim == pytest.approx(expected_ssim, abs=1e-9)


def test_seed_consistency_rewards_a_plain_bicubic_upscale_over_the_truth(astronaut: np.ndarray) -> None:
    """Why the seed's table is not a restoration score: bicubic itself scores best on it."""
    lr = degrade.degrade(astronaut, "bicubic-x4", 0, "astronaut").lr
    bicubic = metrics.bicubic_upscale(lr, 512, 512)
    assert metrics.seed_consistency(lr, bicubic).psnr == math.inf
    assert metrics.seed_consistency(lr, astronaut).psnr < 40


def test_optional_metrics_say_why_they_are_not_computed() -> None:
    status = metrics.optional_metric_status()
    assert set(status) == {"LPIPS", "NIQE"}
    assert all(reason.startswith("not available offline") for reason in status.values())


# --- Degradations ---------------------------------------------------------------------------------------


def test_realistic_degradation_is_reproducible_from_the_seed(astronaut: np.ndarray) -> None:
    first = degrade.degrade(astronaut, "realistic-x4", 7, "astronaut.png")
    again = degrade.degrade(astronaut, "realistic-x4", 7, "astronaut.png")
    assert first.seed == again.seed
    assert first.params == again.params
    assert np.array_equal(first.lr, again.lr)


def test_realistic_degradation_changes_with_the_seed(astronaut: np.ndarray) -> None:
    first = degrade.degrade(astronaut, "realistic-x4", 7, "astronaut.png")
    other = degrade.degrade(astronaut, "realistic-x4", 8, "astronaut.png")
    assert first.params != other.params
    assert not np.array_equal(first.lr, other.lr)


def test_realistic_degradation_records_its_parameters_within_range(astronaut: np.ndarray) -> None:
    result = degrade.degrade(astronaut, "realistic-x4", 3, "a")
    assert 0.4 <= float(result.params["blur_sigma"]) <= 2.0
    assert 1.0 <= float(result.params["noise_sigma"]) <= 8.0
    assert 40 <= int(result.params["jpeg_quality"]) <= 90
    assert "jpeg_quality=" in result.describe()


def test_per_image_seed_depends_on_the_image_name_only() -> None:
    assert degrade.image_seed(0, "a.png") == degrade.image_seed(0, "a.png")
    assert degrade.image_seed(0, "a.png") != degrade.image_seed(0, "b.png")
    assert degrade.image_seed(0, "a.png") != degrade.image_seed(1, "a.png")


def test_bicubic_x4_crops_to_a_multiple_of_four_and_divides_the_size() -> None:
    odd = np.random.default_rng(0).integers(0, 256, (67, 49, 3), dtype=np.uint8)
    result = degrade.degrade(odd, "bicubic-x4", 0, "odd")
    assert result.hr is not None
    assert result.hr.shape == (64, 48, 3)
    assert result.lr.shape == (16, 12, 3)
    assert result.lr.dtype == np.uint8


def test_bicubic_x4_of_a_flat_image_stays_flat() -> None:
    flat = np.full((64, 64, 3), 77, dtype=np.uint8)
    assert np.all(degrade.degrade(flat, "bicubic-x4", 0, "flat").lr == 77)


def test_none_degradation_keeps_the_photo_and_has_no_ground_truth(astronaut: np.ndarray) -> None:
    result = degrade.degrade(astronaut, "none", 0, "a")
    assert result.hr is None
    assert np.array_equal(result.lr, astronaut)


def test_gray_and_rgba_inputs_become_rgb() -> None:
    gray = np.zeros((32, 32), dtype=np.uint8)
    rgba = np.zeros((32, 32, 4), dtype=np.uint16)
    assert degrade.degrade(gray, "bicubic-x4", 0, "g").lr.shape == (8, 8, 3)
    assert degrade.degrade(rgba, "bicubic-x4", 0, "r").lr.shape == (8, 8, 3)


def test_unknown_degradation_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="bicubic-x4"):
        degrade.degrade(np.zeros((8, 8, 3), np.uint8), "gaussian-x3", 0, "x")


# --- Costs ----------------------------------------------------------------------------------------------

CPU = "cpu: AMD EPYC, 2 cores, avx512_bf16"


def _price(name: str, match: tuple[str, ...], usd_per_hour: float) -> costs.Price:
    return costs.Price(name=name, match=match, usd_per_hour=usd_per_hour, source="test", date="2026-01-01")


def test_cost_per_image_and_images_per_dollar_arithmetic() -> None:
    # 90 s at $0.36/h = $0.009 per image = 111.1 images per $1
    assert costs.cost_per_image(90, 0.36) == pytest.approx(0.009)
    assert costs.images_per_dollar(90, 0.36) == pytest.approx(111.111, abs=1e-3)
    # the seed's own example: 7 s on an A10G at $0.00030/s -> $0.0021, ~476 per $1
    assert costs.cost_per_image(7, 0.0003 * 3600) == pytest.approx(0.0021)


def test_cost_table_prices_only_measured_hardware() -> None:
    prices = [
        _price("cpu box", ("cpu:", "AMD EPYC", "2 cores"), 0.36),
        _price("gpu box", ("gpu:", "T4"), 0.59),
    ]
    rows = costs.cost_table(prices, [costs.Workload("sr 256x256", CPU, 6.0)])
    cpu_row, gpu_row = rows
    assert cpu_row.usd_per_image == pytest.approx(6.0 * 0.36 / 3600)
    assert cpu_row.images_per_usd == pytest.approx(1 / (6.0 * 0.36 / 3600))
    assert gpu_row.seconds is None
    assert gpu_row.cells()[3:] == ["not measured"] * 3


def test_price_match_is_whole_word_so_a10_does_not_claim_a10g() -> None:
    a10 = _price("a10", ("gpu:", "A10"), 0.86)
    assert not a10.matches("gpu: NVIDIA A10G")
    assert a10.matches("gpu: NVIDIA A10")


def test_default_price_list_states_source_and_date_for_every_row() -> None:
    prices = costs.load_prices()
    assert len(prices) >= 5
    for price in prices:
        assert price.source and price.date and price.usd_per_hour > 0


def test_cost_markdown_lists_sources() -> None:
    rows = costs.cost_table([_price("cpu box", ("cpu:",), 0.36)], [costs.Workload("x", CPU, 1.0)])
    text = costs.cost_markdown(rows)
    assert "| cpu box | 0.3600 | x | 1.00 | 0.000100 | 10,000 |" in text
    assert "cpu box: test (2026-01-01)" in text


def test_price_list_without_required_fields_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text('[[price]]\nname = "x"\nusd_per_hour = 1.0\n', encoding="utf-8")
    with pytest.raises(costs.PriceListError, match="lacks match, source, date"):
        costs.load_prices(bad)


def test_missing_price_list_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(costs.PriceListError, match="cannot read price list"):
        costs.load_prices(tmp_path / "nope.toml")


# --- Evaluation run (restorer stand-in: a bicubic upscale, so no model is needed) ------------------------


def _bicubic_restorer(lr: np.ndarray) -> evaluate.Restored:
    return evaluate.Restored(
        pixels=evaluate.bicubic_baseline(lr, 4), seconds=0.01, engine="bicubic stand-in, cpu"
    )


def test_evaluate_writes_table_csv_crops_and_matches_direct_metrics(
    tmp_path: Path, astronaut: np.ndarray
) -> None:
    images = [("astronaut.png", astronaut[:128, :96]), ("camera.png", skimage.data.camera()[:64, :64])]
    run = evaluate.evaluate_images(images, "realistic-x4", _bicubic_restorer, tmp_path, base_seed=5)
    first = run.results[0]
    sample = degrade.degrade(astronaut[:128, :96], "realistic-x4", 5, "astronaut.png")
    expected = metrics.psnr_y(sample.hr, evaluate.bicubic_baseline(sample.lr, 4), 4)
    assert first.psnr_y == pytest.approx(expected)
    assert first.psnr_y == pytest.approx(first.bicubic_psnr_y)  # the stand-in IS bicubic
    table = (tmp_path / "results.md").read_text()
    assert "| astronaut.png | 24x32 -> 96x128 |" in table
    assert "**mean**" in table and "LPIPS: not available offline" in table
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [row["image"] for row in rows] == ["astronaut.png", "camera.png"]
    assert rows[0]["seed"] == str(sample.seed) and "jpeg_quality=" in rows[0]["params"]
    crop = np.asarray(PILImage.open(tmp_path / "crops" / "astronaut.png"))
    # input | bicubic | restored | original: square crops of min(160, 128, 96) px under a 16 px label bar
    assert crop.shape == (16 + 96, 4 * 96 + 3 * 4, 3)
    assert (tmp_path / "inputs" / "camera.png").is_file() and (tmp_path / "outputs" / "camera.png").is_file()


def test_evaluate_with_no_degradation_reports_only_the_seed_measure(
    tmp_path: Path, astronaut: np.ndarray
) -> None:
    run = evaluate.evaluate_images([("a.png", astronaut[:32, :32])], "none", _bicubic_restorer, tmp_path)
    assert run.results[0].psnr_y is None
    assert run.results[0].consistency.psnr > 40  # PIL vs OpenCV bicubic: close, not identical
    assert "PSNR-Y ours" not in (tmp_path / "results.md").read_text()


def test_evaluate_refuses_a_restorer_that_returns_the_wrong_size(
    tmp_path: Path, astronaut: np.ndarray
) -> None:
    def wrong(lr: np.ndarray) -> evaluate.Restored:
        return evaluate.Restored(pixels=evaluate.bicubic_baseline(lr, 2), seconds=0.0, engine="x")

    with pytest.raises(ValueError, match="expected 64x64"):
        evaluate.evaluate_images([("a.png", astronaut[:64, :64])], "bicubic-x4", wrong, tmp_path)


def test_detail_window_finds_the_textured_region() -> None:
    image = np.full((100, 100, 3), 128, dtype=np.uint8)
    image[60:90, 10:40] = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    top, left, edge = evaluate.detail_window(image, 30)
    assert (top, left, edge) == (60, 10, 30)


# --- Bench helpers --------------------------------------------------------------------------------------


def test_bench_sizes_accept_groups_and_explicit_sizes() -> None:
    assert bench.parse_sizes("seed") == [(546, 729), (364, 358), (320, 320)]
    assert bench.parse_sizes("32x16,sweep,32x16")[:2] == [(32, 16), (64, 64)]
    with pytest.raises(ValueError, match="not WxH"):
        bench.parse_sizes("8x8")


def test_flop_count_of_the_real_networks_matches_the_published_cost(tmp_path: Path) -> None:
    weights, cache = tmp_path / "weights", tmp_path / "cache"  # embedded weights, converted here
    # RealESRGAN_x4plus: 17.93 M MAC per input pixel; SRVGGNetCompact (animevideov3): 1.24 MFLOP.
    assert bench.flops_per_input_pixel("RealESRGAN_x4plus", weights, cache) == pytest.approx(
        35.85e6, rel=1e-3
    )
    assert bench.flops_per_input_pixel("realesr-animevideov3", weights, cache) == pytest.approx(
        1.24e6, rel=1e-2
    )


def test_efficiency_is_useful_work_over_the_gemm_rate_in_the_same_time() -> None:
    gemm = bench.GemmRate("bf16", threads=2, size=4096, gflops=1800.0)
    # 256x256 x4plus (2.35 TFLOP) in 2.0 s = 1175 GFLOP/s of useful work
    assert bench.efficiency(35.85e6, 256 * 256, 2.0, gemm) == pytest.approx(35.85e6 * 65536 / 2.0 / 1.8e12)
    assert bench.gemm_dtype_for("bf16") == "bf16" and bench.gemm_dtype_for("fp32") == "fp32"
    assert "bf16 GEMM 1800 GFLOP/s" in gemm.describe() and "2 threads" in gemm.describe()


def test_a_gpu_row_is_measured_against_the_gpu_gemm_of_its_precision_and_a_cpu_row_against_the_cpu() -> None:
    spec = bench.BenchSpec(stage="sr", width=64, height=64, model="RealESRGAN_x4plus", engine={})
    gpu_row = bench.Measurement(spec, seconds=[0.001], precision="fp16", hardware="gpu: NVIDIA H100")
    cpu_row = bench.Measurement(spec, seconds=[1.0], precision="bf16", hardware="cpu: AMD EPYC")
    gpu_fp16 = bench.GemmRate("fp16", 16, 8192, 700_000.0, device="cuda")
    cpu_bf16 = bench.GemmRate("bf16", 2, 4096, 700.0)
    assert bench.gemm_dtype_for("fp16", "cuda") == "fp16" and bench.gemm_dtype_for("fp16") == "fp32"
    assert gpu_fp16.measures(gpu_row) and not gpu_fp16.measures(cpu_row)
    assert cpu_bf16.measures(cpu_row) and not cpu_bf16.measures(gpu_row)
    assert "on the GPU" in gpu_fp16.describe()
    table = bench.bench_markdown([gpu_row], {"fp16": gpu_fp16}, 35.85e6)
    efficiency = 35.85e6 * 64 * 64 / 0.001 / 700_000e9  # 0.21
    assert f"| {efficiency:.2f} |" in table


def test_gemm_rate_is_measured_in_a_process_of_its_own() -> None:
    rate = bench.measure_gemm("fp32", threads=1, size=256)
    assert rate.gflops > 0.1 and (rate.dtype, rate.threads, rate.size) == ("fp32", 1, 256)


def test_cpu_peak_is_cores_times_flops_per_cycle_times_clock() -> None:
    peaks = bench.cpu_peaks(ghz=2.0)
    cores = int(peaks.formula.split(" cores")[0])
    per_cycle = int(peaks.formula.split(" x ")[1].split(" ")[0])
    assert peaks.fp32_gflops == pytest.approx(cores * per_cycle * 2.0)
    assert peaks.description.startswith("cpu: ")
    if peaks.bf16_gflops is not None:
        assert peaks.bf16_gflops == pytest.approx(2 * peaks.fp32_gflops)


# --- The commands, end to end on the real cheap model (realesr-animevideov3), tiny images -------------


@pytest.fixture()
def tiny_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state dir, so the embedded weights are converted and compiled into the test's cache."""
    state = tmp_path / "state"
    monkeypatch.setenv("RESTORER_STATE_DIR", str(state))
    return state


@pytest.mark.slow
def test_restorer_eval_command_end_to_end_on_tiny_photos(
    tmp_path: Path, tiny_state: Path, astronaut: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import main

    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    PILImage.fromarray(astronaut[40:72, 200:232]).save(hr_dir / "face.png")
    PILImage.fromarray(skimage.data.camera()[100:132, 200:224]).save(hr_dir / "camera.png")
    (hr_dir / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "eval"
    args = [
        "--degradation",
        "realistic-x4",
        "--out",
        str(out),
        "--model",
        "realesr-animevideov3",
        "--seed",
        "3",
    ]
    code = main(["eval", str(hr_dir), *args])
    assert code == 1  # broken.jpg was skipped and said so
    captured = capsys.readouterr()
    assert "skipped broken.jpg" in captured.err
    assert "| camera.png | 6x8 -> 24x32 |" in captured.out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["image"] for row in rows] == ["camera.png", "face.png"]
    for row in rows:
        assert 10 < float(row["psnr_y"]) < 60 and 0 < float(row["ssim_y"]) <= 1
        assert "realesr-animevideov3" in row["engine"]
    assert (out / "crops" / "face.png").is_file()


@pytest.mark.slow
def test_restorer_bench_command_end_to_end_on_a_tiny_size(
    tmp_path: Path, tiny_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import main

    prices = tmp_path / "prices.toml"
    row = '[[price]]\nname = "{}"\nmatch = {}\nusd_per_hour = {}\nsource = "test"\ndate = "2026"\n'
    prices.write_text(row.format("this box", '["cpu:"]', 0.36) + row.format("a gpu", '["gpu:", "T4"]', 0.59))
    out = tmp_path / "bench"
    args = ["--sizes", "24x16", "--model", "realesr-animevideov3", "--prices", str(prices), "--out", str(out)]
    args += ["--gemm-size", "1024"]  # the yardstick's size is a flag; 4096^2 costs ~15 s of this test
    code = main(["bench", *args])
    report = capsys.readouterr().out
    assert code == 0, report
    data = json.loads((out / "bench.json").read_text())
    stages = {m["spec"]["stage"]: m for m in data["measurements"]}
    assert set(stages) == {"sr", "faces", "pipeline"}
    for measurement in stages.values():
        assert measurement["error"] is None
        assert measurement["median_s"] > 0 and measurement["peak_rss_mb"] > 50
    assert data["flops_per_input_pixel"] == pytest.approx(1.24e6, rel=1e-2)
    assert data["gemm"]["gflops"] > 0 and data["gemm"]["size"] == 1024
    assert f"GEMM {data['gemm']['gflops']:.0f} GFLOP/s" in report
    assert "| stage | input | s/image | input MP/s | GFLOP/s | efficiency |" in report
    sr = stages["sr"]
    expected = bench.efficiency(
        data["flops_per_input_pixel"], 24 * 16, sr["median_s"], bench.GemmRate(**data["gemm"])
    )
    assert f"| {expected:.2f} |" in report.split("| sr | 24x16 |")[1].splitlines()[0]
    assert "| sr | 24x16 |" in report and "| pipeline | 24x16 |" in report
    assert "| a gpu | 0.5900 | - | not measured | not measured | not measured |" in report
    assert "| this box | 0.3600 | pipeline 24x16 |" in report
