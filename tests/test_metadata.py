"""Every photo comes back whole: EXIF (GPS included), XMP (title, keywords, rating, people and face
regions as Lightroom, digiKam and Immich write them), IPTC and ICC survive the restore in every output
format that can hold them. Inputs are written by exiftool and outputs read back by exiftool, an independent
reader (Debian's libimage-exiftool-perl, installed by `make test`), then compared tag by tag: only what
the restore changed may differ (EXPECTED below), plus the container's own description of its pixels."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pillow_heif
import pytest
import tifffile
from PIL import Image as PILImage
from PIL import ImageCms

from pipeline.imageio import apply_orientation, encode_image, format_notes, load_image, output_format_for
from pipeline.metadata import software_name, upright_xmp, xmp_for_output

EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool missing (apt-get install libimage-exiftool-perl; make test does)"
)
pillow_heif.register_heif_opener()  # only to WRITE test HEIC files

WIDTH, HEIGHT = 32, 24  # as stored; orientation 6 turns them into a 24 x 32 upright picture
EXTENSIONS = {
    "jpg": ".jpg",
    "png": ".png",
    "webp": ".webp",
    "tiff": ".tif",
    "tiff16": ".tif",
    "heic": ".heic",
}

# What the tests write into every input: one tag of each kind a photo manager keeps.
XMP_ARGS = [
    "-XMP-dc:Title=Grandma's garden",
    "-XMP-dc:Description=Summer 1962",
    "-XMP-dc:Subject=garden",
    "-XMP-dc:Subject=family",
    "-XMP-xmp:Rating=4",
    "-XMP-lr:HierarchicalSubject=People|Ann",
    "-XMP-digiKam:TagsList=People/Ann",
    "-XMP-mwg-rs:RegionInfo={AppliedToDimensions={W=32,H=24,Unit=pixel},"
    "RegionList=[{Area={X=0.25,Y=0.3,W=0.2,H=0.1,Unit=normalized},Name=Ann,Type=Face}]}",
    "-XMP-MP:RegionInfoMP={Regions=[{PersonDisplayName=Ann,Rectangle=0.15|, 0.25|, 0.2|, 0.1}]}",
    "-XMP-exif:ExifImageWidth=32",
    "-XMP-exif:ExifImageHeight=24",
    "-XMP-exif:GPSLatitude=48.85",
]
EXIF_ARGS = [
    "-EXIF:Make=Kodak",
    "-EXIF:Model=Instamatic",
    "-EXIF:Artist=Ann",
    "-EXIF:Copyright=Family archive",
    "-EXIF:DateTimeOriginal=1962:07:14 15:30:00",
    "-EXIF:ExifImageWidth=32",
    "-EXIF:ExifImageHeight=24",
    "-GPSLatitude=48.85",
    "-GPSLatitudeRef=N",
    "-GPSLongitude=2.35",
    "-GPSLongitudeRef=E",
]
IPTC_ARGS = ["-IPTC:Keywords=garden", "-IPTC:Keywords=family", "-IPTC:Caption-Abstract=Summer 1962"]
# Photoshop's other image resources beside the IPTC one (exiftool writes them in JPEG and PNG only).
PHOTOSHOP_ARGS = ["-Photoshop:IPTCDigest=new", "-Photoshop:URL=https://example.org/archive"]


def orientation_args(orientation: int) -> list[str]:
    return [f"-EXIF:Orientation#={orientation}", f"-XMP-tiff:Orientation#={orientation}"]


# Groups that describe the file's container and its pixel storage, not the photo: each encoder writes its
# own (JPEG's JFIF header, PNG's IHDR, WebP's RIFF, HEIC's boxes, exiftool's file facts).
CONTAINER_GROUPS = {"ExifTool", "System", "File", "Composite", "JFIF", "PNG", "RIFF", "QuickTime", "Meta"}
# A TIFF's IFD0 is its container as well: these say how its pixels are stored.
TIFF_STORAGE = {
    "ImageWidth",
    "ImageHeight",
    "BitsPerSample",
    "Compression",
    "PhotometricInterpretation",
    "StripOffsets",
    "SamplesPerPixel",
    "RowsPerStrip",
    "StripByteCounts",
    "PlanarConfiguration",
    "ExtraSamples",
    "Predictor",
}


def expected_changes(width: int, height: int) -> dict[str, Any]:
    """Every tag the restore may change, and its value in the output of a width x height restore of the
    inputs above (stored 32 x 24 with orientation 6): the orientation baked into the pixels, the face
    regions turned with them (MWG says regions apply to the stored pixels), the new pixel dimensions,
    and the Software that wrote the file. Nothing else may differ."""
    return {
        "IFD0:Orientation": 1,
        "XMP-tiff:Orientation": 1,
        "IFD0:Software": software_name(),
        "ExifIFD:ExifImageWidth": width,
        "ExifIFD:ExifImageHeight": height,
        "XMP-exif:ExifImageWidth": width,
        "XMP-exif:ExifImageHeight": height,
        "XMP-mwg-rs:RegionAppliedToDimensionsW": width,
        "XMP-mwg-rs:RegionAppliedToDimensionsH": height,
        # centre (0.25, 0.3), 0.2 x 0.1 of the stored picture, turned 90 degrees clockwise
        "XMP-mwg-rs:RegionAreaX": 0.7,
        "XMP-mwg-rs:RegionAreaY": 0.25,
        "XMP-mwg-rs:RegionAreaW": 0.1,
        "XMP-mwg-rs:RegionAreaH": 0.2,
        "XMP-MP:RegionRectangle": "0.65, 0.15, 0.1, 0.2",
    }


def stored_pixels() -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.dstack([x * 8, y * 10, (x + y) * 4]).astype(np.uint8)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exiftool(*args: str) -> str:
    done = subprocess.run([str(EXIFTOOL), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def photo_with_metadata(path: Path, kind: str, orientation: int = 6, extra: tuple[str, ...] = ()) -> Path:
    """A small photo of `kind` with an ICC profile, written by Pillow / tifffile / pillow-heif, then given
    EXIF, GPS, XMP and IPTC (where the format has a place for it) by exiftool."""
    icc = srgb_icc()
    pixels = stored_pixels()
    if kind == "tiff16":
        tifffile.imwrite(
            path,
            pixels.astype(np.uint16) * 257,
            photometric="rgb",
            extratags=[(34675, "B", len(icc), icc, True)],
        )
    else:
        pil_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "tiff": "TIFF", "heic": "HEIF"}[kind]
        PILImage.fromarray(pixels).save(path, pil_format, icc_profile=icc, quality=95)
    holds_iptc = kind in ("jpg", "png", "tiff", "tiff16")  # WebP and HEIC define no place for IPTC
    args = [*XMP_ARGS, *EXIF_ARGS, *orientation_args(orientation), *(IPTC_ARGS if holds_iptc else [])]
    args += [*(PHOTOSHOP_ARGS if kind in ("jpg", "png") else []), *extra]
    exiftool("-q", "-m", "-overwrite_original", *args, str(path))
    return path


def tags(path: Path) -> dict[str, Any]:
    """Every tag exiftool reads (-a: duplicates too, -n: values as stored, -b: binary ones in base64),
    keyed by family-1 group: the photo's metadata, without its container's own description."""
    found = json.loads(exiftool("-j", "-G1", "-a", "-s", "-n", "-b", str(path)))[0]
    kept = {}
    for key, value in found.items():
        group, _, name = key.partition(":")
        if key == "SourceFile" or group in CONTAINER_GROUPS or (group == "IFD0" and name in TIFF_STORAGE):
            continue
        kept[key] = value
    return kept


def validation_warnings(path: Path) -> set[str]:
    """exiftool's own check of the file's structure (-validate), one line per warning."""
    lines = exiftool("-s3", "-validate", "-warning", "-a", str(path)).splitlines()
    return set(lines[1:])  # the first line is the count


# Pillow and tifffile write Deflate as compression 8 (Adobe's code), which exiftool's strict check calls
# non-baseline; it says nothing about the metadata.
DEFLATE_WARNING = "Invalid value for IFD0 tag 0x0103 Compression"


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def assert_only_expected_changes(
    before: dict[str, Any], after: dict[str, Any], expected: dict[str, Any], dropped: set[str] = frozenset()
) -> None:
    """Each expected change happened (to a tag the input had), `dropped` tags are gone, nothing else moved."""
    for key, value in expected.items():
        if key == "IFD0:Software":
            assert after.get(key) == value, key
            continue
        assert key in before, f"the input lacks {key}: the test would prove nothing"
        found = float(after[key]) if isinstance(value, float) and key in after else after.get(key)
        assert found == (pytest.approx(value) if isinstance(value, float) else value), (key, found)
    for key in dropped:
        assert key in before and key not in after, key
    unexpected = {key: change for key, change in differences(before, after).items() if key not in expected}
    unexpected = {key: change for key, change in unexpected.items() if key not in dropped}
    assert unexpected == {}


def restored_through_io(source: Path, fmt: str = "same", **options: Any) -> Path:
    """load_image -> encode_image, the two ends of every restore, written next to the source."""
    image = load_image(source)
    chosen = output_format_for(image, fmt)
    target = source.with_name(f"{source.stem}-out{'.tif' if chosen == 'tiff' else '.' + chosen}")
    target.write_bytes(encode_image(image, chosen, **options))
    return target


# -- same format in and out ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jpg", "png", "webp", "tiff", "tiff16"])
def test_every_tag_survives_load_and_encode_in_the_same_format(kind: str, tmp_path: Path) -> None:
    source = photo_with_metadata(tmp_path / f"photo{EXTENSIONS[kind]}", kind)
    before = tags(source)
    written = {"GPS:GPSLatitude", "XMP-dc:Title", "XMP-mwg-rs:RegionName", "ICC-header:ProfileVersion"}
    written |= {"IPTC:Keywords"} if kind != "webp" else set()
    written |= {"Photoshop:URL"} if kind in ("jpg", "png") else set()
    assert written <= set(before)
    output = restored_through_io(source)
    assert_only_expected_changes(before, tags(output), expected_changes(HEIGHT, WIDTH))
    assert validation_warnings(output) <= validation_warnings(source) | {DEFLATE_WARNING}


def test_heic_written_as_jpeg_keeps_exif_xmp_and_icc(tmp_path: Path) -> None:
    """HEIC turns a picture with its own boxes (irot/imir), not with EXIF Orientation, so it is stored
    upright here (orientation 1); pillow-heif drops XMP's tiff:Orientation while reading, and 1 is what
    it would say."""
    source = photo_with_metadata(tmp_path / "photo.heic", "heic", orientation=1)
    before = tags(source)
    output = restored_through_io(source)
    assert output.suffix == ".jpg"
    after = tags(output)
    assert after.get("XMP-tiff:Orientation", 1) == 1
    after.pop("XMP-tiff:Orientation", None)
    before.pop("XMP-tiff:Orientation")
    unchanged = {"IFD0:Software": software_name()}
    assert_only_expected_changes(before, after, unchanged)


# -- other formats out -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "webp", "tiff"])
def test_a_jpeg_written_as_another_format_keeps_what_that_format_can_hold(fmt: str, tmp_path: Path) -> None:
    source = photo_with_metadata(tmp_path / "photo.jpg", "jpg")
    before = tags(source)
    after = tags(restored_through_io(source, fmt))
    dropped = set()
    if fmt == "webp":  # WebP has EXIF, XMP and ICC chunks, and no place for IPTC or Photoshop resources
        dropped = {key for key in before if key.startswith(("IPTC:", "Photoshop:"))}
    notes = format_notes(load_image(source), fmt)
    assert any("no place for IPTC" in note for note in notes) == (fmt == "webp")
    if fmt == "tiff":  # how a JPEG stores its YCbCr samples; an RGB TIFF has none
        dropped = {"IFD0:YCbCrPositioning"}
    assert_only_expected_changes(before, after, expected_changes(HEIGHT, WIDTH), dropped)


# -- what the restore changes, and only that ---------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_face_regions_turn_with_the_pixels_for_every_orientation(orientation: int, tmp_path: Path) -> None:
    """A white box drawn where the regions say a face is, in the stored pixels: after the picture is
    turned upright, exiftool must read both kinds of region (MWG centre + size, Microsoft corner + size)
    exactly where the box now is."""
    x0, x1, y0, y1 = 4, 12, 6, 10
    stored = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    stored[y0:y1, x0:x1] = 255
    source = tmp_path / "faces.png"
    PILImage.fromarray(stored).save(source)
    area = (
        f"X={(x0 + x1) / 2 / WIDTH},Y={(y0 + y1) / 2 / HEIGHT},W={(x1 - x0) / WIDTH},H={(y1 - y0) / HEIGHT}"
    )
    rectangle = f"{x0 / WIDTH}|, {y0 / HEIGHT}|, {(x1 - x0) / WIDTH}|, {(y1 - y0) / HEIGHT}"
    exiftool(
        "-q",
        "-overwrite_original",
        f"-EXIF:Orientation#={orientation}",
        f"-XMP-mwg-rs:RegionInfo={{RegionList=[{{Area={{{area},Unit=normalized}},Name=Ann,Type=Face}}]}}",
        f"-XMP-MP:RegionInfoMP={{Regions=[{{PersonDisplayName=Ann,Rectangle={rectangle}}}]}}",
        str(source),
    )
    upright = load_image(source).pixels
    np.testing.assert_array_equal(upright, apply_orientation(stored, orientation))
    rows, columns = np.nonzero(upright[:, :, 0])
    height, width = upright.shape[:2]
    left, top = columns.min() / width, rows.min() / height
    box_width, box_height = (columns.max() + 1) / width - left, (rows.max() + 1) / height - top
    after = tags(restored_through_io(source))
    assert float(after["XMP-mwg-rs:RegionAreaX"]) == pytest.approx(left + box_width / 2, abs=1e-6)
    assert float(after["XMP-mwg-rs:RegionAreaY"]) == pytest.approx(top + box_height / 2, abs=1e-6)
    assert float(after["XMP-mwg-rs:RegionAreaW"]) == pytest.approx(box_width, abs=1e-6)
    assert float(after["XMP-mwg-rs:RegionAreaH"]) == pytest.approx(box_height, abs=1e-6)
    rectangle_after = [float(part) for part in after["XMP-MP:RegionRectangle"].split(",")]
    assert rectangle_after == pytest.approx([left, top, box_width, box_height], abs=1e-6)


@pytest.mark.parametrize("software", [None, "Adobe Photoshop Lightroom Classic 13.0 (Windows)"])
def test_exif_is_kept_byte_for_byte_apart_from_what_the_restore_changed(
    software: str | None, tmp_path: Path
) -> None:
    """Edited in place: maker notes, whose offsets point into the block, stay valid. The only bytes of the
    input's block that change are the orientation, the two dimensions and the Software: written over the
    old name when it fits, else an IFD0 with a Software entry appended and the header pointed at it."""
    extra = (f"-EXIF:Software={software}",) if software else ()
    source = photo_with_metadata(tmp_path / "photo.jpg", "jpg", extra=extra)
    before = PILImage.open(source).info["exif"]
    after = PILImage.open(restored_through_io(source)).info["exif"]
    changed = [index for index in range(len(before)) if before[index] != after[index]]
    values = 3 * 2  # orientation and two SHORT dimensions
    if software:
        assert len(after) == len(before)
        assert 0 < len(changed) <= values + 4 + len(software)  # + the entry's count, the name's bytes
    else:
        assert len(after) > len(before)
        assert 0 < len(changed) <= values + 4  # + the header's pointer to IFD0


def test_strip_gps_removes_the_position_from_exif_and_xmp_and_leaves_no_trace(tmp_path: Path) -> None:
    source = photo_with_metadata(tmp_path / "photo.jpg", "jpg")
    before = tags(source)
    output = restored_through_io(source, strip_gps=True)
    latitude = struct.pack(">6I", 48, 1, 51, 1, 0, 1)  # 48 deg 51' as EXIF rationals, big-endian
    assert latitude in source.read_bytes() and latitude not in output.read_bytes()
    assert b"48,51" in source.read_bytes() and b"48,51" not in output.read_bytes()  # XMP's GPSLatitude
    gps = {key for key in before if key.startswith("GPS:") or key.startswith("XMP-exif:GPS")}
    assert_only_expected_changes(before, tags(output), expected_changes(HEIGHT, WIDTH), dropped=gps)


def test_xmp_over_64_kb_survives_as_extended_xmp_and_in_every_format(tmp_path: Path) -> None:
    description = tmp_path / "description.txt"
    description.write_text("A long story of the garden. " * 4000)  # 112 KB: beyond one JPEG segment
    source = photo_with_metadata(
        tmp_path / "photo.jpg", "jpg", extra=(f"-XMP-dc:Description<={description}",)
    )
    before = tags(source)
    assert "XMP-xmpNote:HasExtendedXMP" in before and len(before["XMP-dc:Description"]) > 100_000
    expected = expected_changes(HEIGHT, WIDTH)
    assert_only_expected_changes(before, tags(restored_through_io(source)), expected)
    as_png = restored_through_io(source, "png")  # no 64 KB limit: one packet, no pointer
    assert_only_expected_changes(before, tags(as_png), expected, dropped={"XMP-xmpNote:HasExtendedXMP"})
    back_to_jpeg = tags(restored_through_io(as_png, "jpg"))  # split again: nothing is cut off
    assert back_to_jpeg.pop("XMP-xmpNote:HasExtendedXMP")
    assert_only_expected_changes(before, back_to_jpeg, expected, dropped={"XMP-xmpNote:HasExtendedXMP"})


def test_xmp_edits_keep_the_packet_size_through_its_padding() -> None:
    packet = (
        b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
        b' xmlns:exif="http://ns.adobe.com/exif/1.0/" tiff:Orientation="6">'
        b"<exif:PixelXDimension>32</exif:PixelXDimension><exif:PixelYDimension>24</exif:PixelYDimension>"
        b"</rdf:Description></rdf:RDF></x:xmpmeta>\n" + (b" " * 99 + b"\n") * 20 + b'<?xpacket end="w"?>'
    )
    upright = upright_xmp(packet, 6)
    restored = xmp_for_output(upright, 12000, 16000, strip_gps=False)
    assert len(upright) == len(restored) == len(packet)
    assert b'tiff:Orientation="1"' in restored
    assert b"<exif:PixelXDimension>12000</exif:PixelXDimension>" in restored
    assert b"<exif:PixelYDimension>16000</exif:PixelYDimension>" in restored


def test_damaged_metadata_never_costs_the_picture() -> None:
    buffer = io.BytesIO()
    PILImage.fromarray(stored_pixels()).save(buffer, "JPEG")
    data = buffer.getvalue()
    damaged = [
        b"Photoshop 3.0\x00" + b"8BIM\x04\x04\x00\x00\xff\xff\xff\xff" + b"\x1c" * 20,  # size past the end
        b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 10,  # extended XMP cut inside its header
        b"Exif\x00\x00MM\x00*\x00\x00\xff\xff",  # IFD0 beyond the block
        b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta tiff:Orientation='6'",  # not XML at all
    ]
    for payload in damaged:
        marker = b"\xff\xed" if payload.startswith(b"Photoshop") else b"\xff\xe1"
        file = data[:2] + marker + struct.pack(">H", len(payload) + 2) + payload + data[2:]
        image = load_image(file)
        assert image.pixels.shape == (HEIGHT, WIDTH, 3)
        for fmt in ("jpg", "png", "webp", "tiff"):
            assert load_image(encode_image(image, fmt)).pixels.shape == (HEIGHT, WIDTH, 3)


# -- through the real restore: the command line and the daemon's worker ------------------------------------


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_cli_restore's state dir: the embedded network is converted and compiled once per session."""
    return tmp_path_factory.getbasetemp() / "restorer-state"


def test_restorer_restore_keeps_every_tag_of_a_jpeg(tmp_path: Path, state_dir: Path) -> None:
    """`restorer restore` end to end (the real embedded network, the fast one): the 4x output holds
    everything the input held, with the new size."""
    from app.cli import main

    (tmp_path / "in").mkdir()
    source = photo_with_metadata(tmp_path / "in" / "photo.jpg", "jpg")
    out = tmp_path / "out"
    args = ["restore", str(source), "-o", str(out), "--model", "realesr-animevideov3", "--no-face"]
    assert main([*args, "--state-dir", str(state_dir), "--weights-dir", str(state_dir / "weights")]) == 0
    output = out / "photo.jpg"
    assert PILImage.open(output).size == (HEIGHT * 4, WIDTH * 4)
    assert_only_expected_changes(tags(source), tags(output), expected_changes(HEIGHT * 4, WIDTH * 4))


class SmallNetworkProcessor:
    """The daemon's per-file path (pipeline.restore_bytes: decode, restore, encode) with a small numpy
    network standing in for the real one, which the command-line test above runs."""

    def __init__(self, settings: Any) -> None:
        from pipeline import Restorer
        from tests.fake_upscalers import ConvStackUpscaler

        self._restorer = Restorer(
            settings.engine_config(), upscaler_loader=lambda *_: ConvStackUpscaler(scale=4, layers=2)
        )

    def warm_up(self, options: Any) -> Any:
        from daemon.messages import EngineAccount

        return EngineAccount("numpy", "cpu", "fp32", "test network")

    def process(self, data: bytes, options: Any, on_progress: Any) -> Any:
        from daemon.job_loop import Processed
        from pipeline import restore_bytes

        restored = restore_bytes(self._restorer, data, options.replace(faces=False), max_pixels=10**6)
        return Processed.of(restored)


def test_the_daemon_worker_publishes_a_16bit_tiff_with_every_tag(tmp_path: Path) -> None:
    """A job through the daemon's worker, on real folders and a real store, published to the outbox."""
    from tests.support.settings import make_settings
    from tests.test_job_loop import Rig

    source = photo_with_metadata(tmp_path / "photo.tif", "tiff16")
    rig = Rig(tmp_path / "daemon", SmallNetworkProcessor(make_settings(tmp_path / "daemon")))
    try:
        rig.drop("album/photo.tif", source.read_bytes())
        job = rig.run()
    finally:
        rig.store.close()
    assert job.state == "done", job.error
    output = Path(rig.settings.outbox) / "album" / "photo.tif"
    assert tifffile.imread(output).dtype == np.uint16
    assert_only_expected_changes(tags(source), tags(output), expected_changes(HEIGHT * 4, WIDTH * 4))


def hostile_exif(entries: int = 2000) -> bytes:
    """IFD0 turned 90 degrees, whose Exif IFD is IFD0 itself, and whose other entries each claim the
    whole block as their value: naive copying would follow the loop forever or copy it 2000 times."""
    size = 8 + 2 + 12 * entries + 4
    table = [struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0), struct.pack(">HHII", 0x8769, 4, 1, 8)]
    table += [struct.pack(">HHII", 0xC000 + index, 7, size, 0) for index in range(entries - 2)]
    return b"MM\x00*" + struct.pack(">IH", 8, entries) + b"".join(table) + b"\x00" * 4


def hostile_xmp(repeat: int = 20_000) -> bytes:
    """Megabytes of elements and attributes that never close, where a careless pattern backtracks
    quadratically, around the namespaces that make the region and orientation edits run."""
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/"'
        b' xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
        b' xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:stDim="http://ns.adobe.com/xap/1.0/sType/Dimensions#">'
        + b"<mwg-rs:Area>" * repeat
        + b' tiff:Orientation="' * repeat
        + b" <exif:GPSLatitude " * repeat
        + b"<stDim:w>" * repeat
        + b" " * (1 << 20)
        + b"<?xpacket end="
    )


@pytest.mark.timeout(60)
def test_hostile_metadata_costs_bounded_work_and_never_the_picture() -> None:
    from pipeline.metadata import OutputMetadata, png_with_metadata

    buffer = io.BytesIO()
    PILImage.fromarray(stored_pixels()).save(buffer, "PNG")
    data = png_with_metadata(buffer.getvalue(), OutputMetadata(exif=hostile_exif(), xmp=hostile_xmp()))
    image = load_image(data)
    assert image.pixels.shape == (WIDTH, HEIGHT, 3)  # the orientation was still read and applied
    for fmt in ("jpg", "png", "webp", "tiff"):
        assert load_image(encode_image(image, fmt, strip_gps=True)).pixels.shape == (WIDTH, HEIGHT, 3)


def test_regions_written_as_attributes_as_digikam_does_turn_too(tmp_path: Path) -> None:
    """digiKam (through Exiv2) writes each area, and simple properties, as attributes of an element,
    exiftool as child elements (the tests above); both forms are edited, and exiftool reads the result."""
    packet = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/"'
        b' xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#"'
        b' xmlns:stDim="http://ns.adobe.com/xap/1.0/sType/Dimensions#" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
        b' xmlns:exif="http://ns.adobe.com/exif/1.0/" tiff:Orientation="6" exif:GPSLatitude="48,51.0N"'
        b' exif:GPSLongitude="2,21.0E" exif:PixelXDimension="32">'
        b'<mwg-rs:Regions rdf:parseType="Resource">'
        b'<mwg-rs:AppliedToDimensions stDim:w="32" stDim:h="24" stDim:unit="pixel"/>'
        b"<mwg-rs:RegionList><rdf:Bag><rdf:li>"
        b'<rdf:Description mwg-rs:Name="Ann" mwg-rs:Type="Face">'
        b'<mwg-rs:Area stArea:x="0.25" stArea:y="0.3" stArea:w="0.2" stArea:h="0.1"'
        b' stArea:unit="normalized"/>'
        b"</rdf:Description></rdf:li></rdf:Bag></mwg-rs:RegionList></mwg-rs:Regions>"
        b"</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    sidecar = tmp_path / "photo.xmp"
    sidecar.write_bytes(xmp_for_output(upright_xmp(packet, 6), 96, 128, strip_gps=True))
    after = tags(sidecar)
    assert after["XMP-tiff:Orientation"] == 1 and after["XMP-exif:ExifImageWidth"] == 96
    assert not [key for key in after if "GPS" in key] and b"48,51" not in sidecar.read_bytes()
    assert [float(after[f"XMP-mwg-rs:RegionArea{name}"]) for name in "XYWH"] == [0.7, 0.25, 0.1, 0.2]
    dimensions = [after[f"XMP-mwg-rs:RegionAppliedToDimensions{name}"] for name in "WH"]
    assert dimensions == [96, 128]


def test_extended_xmp_merged_into_one_packet_loses_its_pointer_in_either_form() -> None:
    from pipeline.metadata import merge_extended_xmp

    extended = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description>long'
        b"</dc:description></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    guid = b"0123456789ABCDEF0123456789ABCDEF"
    for pointer in (
        b' xmpNote:HasExtendedXMP="' + guid + b'">',
        b"><xmpNote:HasExtendedXMP>" + guid + b"</xmpNote:HasExtendedXMP>",
    ):
        standard = (
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description rdf:about="" xmlns:xmpNote="http://ns.adobe.com/xmp/note/"'
            + pointer
            + b"</rdf:Description></rdf:RDF></x:xmpmeta>"
        )
        merged = merge_extended_xmp(standard, extended)
        assert b"HasExtendedXMP" not in merged and b"<dc:description>long</dc:description>" in merged
        assert merged.count(b"</rdf:RDF>") == 1


@pytest.mark.parametrize(("bigtiff", "start"), [(False, 0), (True, 0), (False, 7), (True, 7)])
def test_tiff_metadata_is_appended_to_any_finished_tiff_or_bigtiff_in_a_stream(
    bigtiff: bool, start: int, tmp_path: Path
) -> None:
    """add_tiff_metadata is what a strip encoder calls once its file is written: a TIFF or BigTIFF
    (tifffile's, as for outputs above 2 GB) that begins anywhere in a read/write stream."""
    from pipeline.imageio import output_metadata
    from pipeline.metadata import add_tiff_metadata

    source = photo_with_metadata(tmp_path / "photo.jpg", "jpg")
    image = load_image(source)
    stream = io.BytesIO(b"\x00" * start)
    stream.seek(start)
    tifffile.imwrite(stream, image.pixels, photometric="rgb", bigtiff=bigtiff, software=False, metadata=None)
    add_tiff_metadata(stream, output_metadata(image, strip_gps=False), start=start)
    output = tmp_path / "out.tif"
    output.write_bytes(stream.getvalue()[start:])
    np.testing.assert_array_equal(tifffile.imread(output), image.pixels)
    before, after = tags(source), tags(output)
    if bigtiff:
        before, after = bigtiff_as_exiftool_reads_it(before, after, output)
    dropped = {"IFD0:YCbCrPositioning"}  # how a JPEG stores its YCbCr samples; an RGB TIFF has none
    assert_only_expected_changes(before, after, expected_changes(HEIGHT, WIDTH), dropped)


def bigtiff_as_exiftool_reads_it(
    before: dict[str, Any], after: dict[str, Any], output: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """exiftool 12.57 names a BigTIFF's Exif IFD "ExifOffset", shows its 4 undefined bytes of
    ComponentsConfiguration as text, and reads its GPS IFD with the Exif table's names (GPSLatitudeRef
    as InteropIndex): the Exif group is renamed back, and what it misreads is read with tifffile, a
    second reader that knows BigTIFF."""
    tiff_tags = tifffile.TiffFile(output).pages[0].tags
    gps, exif = tiff_tags["GPSTag"].value, tiff_tags["ExifTag"].value
    assert (gps["GPSLatitudeRef"], gps["GPSLatitude"]) == ("N", (48, 1, 51, 1, 0, 1))
    assert (gps["GPSLongitudeRef"], gps["GPSLongitude"]) == ("E", (2, 1, 21, 1, 0, 1))
    assert exif["ComponentsConfiguration"] == b"\x01\x02\x03\x00"
    misread = ("GPS:", "GPSInfo:", "ExifIFD:ComponentsConfiguration")
    renamed = {key.replace("ExifOffset:", "ExifIFD:"): value for key, value in after.items()}
    return (
        {key: value for key, value in before.items() if not key.startswith(misread)},
        {key: value for key, value in renamed.items() if not key.startswith(misread)},
    )
