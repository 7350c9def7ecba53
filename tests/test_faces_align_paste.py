"""Alignment and paste-back: pure numpy/OpenCV, no network (the face is pasted back as it was cut out)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from pipeline.faces.align import (
    CROP_SIZE,
    FFHQ_TEMPLATE_512,
    align_face,
    rescale_source,
    similarity_to_template,
    transform_points,
    valid_crop_region,
)
from pipeline.faces.paste import crop_blend_mask, face_mask_for, match_colour, paste_face

# MTCNN's landmarks for skimage's astronaut (tests/test_faces_detect.py checks the detector finds them).
ASTRONAUT_LANDMARKS = np.array(
    [[204.4, 101.4], [247.3, 103.4], [225.5, 128.8], [201.4, 140.4], [245.7, 141.8]]
)


def astronaut_float() -> np.ndarray:
    return skimage.data.astronaut().astype(np.float32) / 255.0


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def upscale_uint8(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Stand-in for the super-resolved output: a plain resize of the input."""
    h, w = rgb.shape[:2]
    return to_uint8(cv2.resize(rgb, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC))


def test_similarity_recovers_a_known_rotation_scale_and_shift():
    angle, scale, shift = np.deg2rad(17.0), 0.37, np.array([40.0, -12.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (FFHQ_TEMPLATE_512 - shift) @ np.linalg.inv(rotation).T
    matrix = similarity_to_template(landmarks)
    np.testing.assert_allclose(transform_points(matrix, landmarks), FFHQ_TEMPLATE_512, atol=1e-6)


def test_degenerate_landmarks_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="degenerate"):
        similarity_to_template(np.ones((5, 2)))


def test_aligned_crop_puts_the_eyes_on_the_template():
    rgb = astronaut_float()
    matrix = similarity_to_template(ASTRONAUT_LANDMARKS)
    crop = align_face(rgb, matrix)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.float32
    mapped = transform_points(matrix, ASTRONAUT_LANDMARKS)
    # Least squares over five points: each lands within a few template pixels of its target.
    assert np.abs(mapped - FFHQ_TEMPLATE_512).max() < 16


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_align_then_inverse_paste_of_an_unchanged_face_changes_it_less_than_one_level(scale):
    rgb = astronaut_float()
    output = upscale_uint8(rgb, scale)
    before = output.copy()
    matrix = similarity_to_template(ASTRONAUT_LANDMARKS)
    crop = align_face(rgb, matrix)
    region = paste_face(output, crop, face_mask_for(matrix, (512, 512)), rescale_source(matrix, scale))
    assert region is not None
    written = region.full_mask(*output.shape[:2])
    assert written.sum() > (60 * scale) ** 2  # the face area really was rewritten
    change = np.abs(output.astype(np.float64) - before)[written].mean() / 255.0
    assert change < 1 / 255


def test_pixels_outside_the_face_mask_are_byte_identical():
    rgb = astronaut_float()
    output = upscale_uint8(rgb, 2)
    before = output.copy()
    matrix = similarity_to_template(ASTRONAUT_LANDMARKS)
    garish = np.zeros((CROP_SIZE, CROP_SIZE, 3), np.float32)
    garish[..., 1] = 1.0  # a green face: every written pixel visibly changes
    region = paste_face(output, garish, face_mask_for(matrix, (512, 512)), rescale_source(matrix, 2))
    written = region.full_mask(*output.shape[:2])
    assert np.array_equal(output[~written], before[~written])
    assert (output[written] != before[written]).any(axis=-1).mean() > 0.9


def test_pasted_face_has_no_visible_box_edge():
    output = np.full((1024, 1024, 3), 128, np.uint8)  # flat, so every change comes from the mask
    matrix = similarity_to_template(ASTRONAUT_LANDMARKS)
    white = np.ones((CROP_SIZE, CROP_SIZE, 3), np.float32)
    mask = face_mask_for(matrix, (512, 512))
    paste_face(output, white, mask, rescale_source(matrix, 2), colour_match=False)
    eye_row = output[round(ASTRONAUT_LANDMARKS[0, 1] * 2), :, 0].astype(int)
    assert eye_row.max() == 255 and eye_row.min() == 128
    # The face's edge ramps over dozens of pixels: no step larger than a few levels anywhere.
    assert np.abs(np.diff(eye_row)).max() <= 8


def test_paste_keeps_16_bit_output_and_its_precision():
    rgb = astronaut_float()
    output = np.clip(np.rint(rgb * 65535), 0, 65535).astype(np.uint16)
    before = output.copy()
    matrix = similarity_to_template(ASTRONAUT_LANDMARKS)
    region = paste_face(output, align_face(rgb, matrix), face_mask_for(matrix, (512, 512)), matrix)
    assert output.dtype == np.uint16
    written = region.full_mask(512, 512)
    assert np.array_equal(output[~written], before[~written])
    assert np.abs(output.astype(np.float64) - before)[written].mean() < 65535 / 255


def test_strength_zero_leaves_the_super_resolved_face_untouched():
    rgb = astronaut_float()
    output = to_uint8(rgb)
    before = output.copy()
    matrix = similarity_to_template(ASTRONAUT_LANDMARKS)
    white = np.ones((CROP_SIZE, CROP_SIZE, 3), np.float32)
    assert paste_face(output, white, face_mask_for(matrix, (512, 512)), matrix, strength=0.0) is None
    assert np.array_equal(output, before)


def test_half_strength_lands_halfway_between_restored_and_super_resolved():
    output = np.full((512, 512, 3), 100, np.uint8)
    matrix = similarity_to_template(ASTRONAUT_LANDMARKS)
    face = np.full((CROP_SIZE, CROP_SIZE, 3), 200 / 255, np.float32)
    mask = face_mask_for(matrix, (512, 512))
    paste_face(output, face, mask, matrix, strength=0.5, colour_match=False)
    centre = np.rint(ASTRONAUT_LANDMARKS[2]).astype(int)
    assert abs(int(output[centre[1], centre[0], 0]) - 150) <= 1


def test_face_cut_by_the_image_border_is_masked_to_the_part_inside():
    rgb = astronaut_float()[:, 190:]  # the face's left half is cut off
    landmarks = ASTRONAUT_LANDMARKS - [190, 0]
    matrix = similarity_to_template(landmarks)
    valid = valid_crop_region(matrix, (rgb.shape[1], rgb.shape[0]))
    assert 0.1 < valid.mean() < 0.9
    mask = face_mask_for(matrix, (rgb.shape[1], rgb.shape[0]))
    assert mask[~valid].max() == 0.0  # never blend the grey filler the crop got outside the image
    output = to_uint8(rgb)
    before = output.copy()
    paste_face(output, np.zeros((512, 512, 3), np.float32), mask, matrix)
    # The mask is eroded from the image border too (24 crop px = 8 input px here): no seam at the edge.
    assert np.array_equal(output[:, :6], before[:, :6])
    assert (output[:, 6:60] != before[:, 6:60]).any()


def test_mask_is_zero_at_the_crop_edge_and_one_over_the_face():
    mask = crop_blend_mask(np.ones((CROP_SIZE, CROP_SIZE), bool))
    assert mask[0].max() == 0 and mask[:, -1].max() == 0
    x0, y0 = FFHQ_TEMPLATE_512.min(axis=0).astype(int) - 40
    x1, y1 = FFHQ_TEMPLATE_512.max(axis=0).astype(int) + 40
    assert mask[y0:y1, x0:x1].min() == 1.0


def test_colour_match_removes_a_tone_shift_but_keeps_detail():
    rng = np.random.default_rng(0)
    underneath = np.full((CROP_SIZE, CROP_SIZE, 3), 0.5, np.float32)
    detail = rng.normal(0, 0.05, (CROP_SIZE, CROP_SIZE, 3)).astype(np.float32)
    restored = underneath + detail + np.array([0.15, -0.1, 0.05], np.float32)  # warmer, detailed face
    matched = match_colour(restored, underneath, np.ones((CROP_SIZE, CROP_SIZE), np.float32))
    assert np.abs(matched.mean(axis=(0, 1)) - 0.5).max() < 0.01
    assert np.corrcoef((matched - 0.5).ravel(), detail.ravel())[0, 1] > 0.95


def test_overlapping_faces_blend_smoothly_and_leave_the_rest_alone():
    output = np.full((1024, 1024, 3), 128, np.uint8)  # a 2x output of a 512 input, flat so edges show
    before = output.copy()
    shift = np.array([45.0, 10.0])  # a neighbour's face, half overlapping the first
    written = np.zeros((1024, 1024), bool)
    for landmarks, value in ((ASTRONAUT_LANDMARKS, 1.0), (ASTRONAUT_LANDMARKS + shift, 0.0)):
        matrix = similarity_to_template(landmarks)
        face = np.full((CROP_SIZE, CROP_SIZE, 3), value, np.float32)
        mask = face_mask_for(matrix, (512, 512))
        region = paste_face(output, face, mask, rescale_source(matrix, 2), colour_match=False)
        written |= region.full_mask(1024, 1024)
    assert np.array_equal(output[~written], before[~written])
    first_eye, second_eye = ASTRONAUT_LANDMARKS[0] * 2, (ASTRONAUT_LANDMARKS[0] + shift) * 2
    assert output[round(first_eye[1]) - 80, round(first_eye[0]) - 80, 0] > 200  # only the first face there
    assert output[round(second_eye[1]), round(second_eye[0]), 0] < 10  # the later face lies on top
    row = output[round(second_eye[1]), :, 0].astype(int)
    assert np.abs(np.diff(row)).max() <= 12  # white to black over ~40 px: no hard edge where masks cross
