"""A photo's metadata, carried whole from the input file to the restored one.

What is carried (each in one field of `pipeline.types.Image`): EXIF (with its GPS and maker notes), the
XMP packet (titles, keywords, ratings, people and face regions written by Lightroom, digiKam, darktable,
Immich...; JPEG's extended XMP too), IPTC-IIM, the other Photoshop image resources and the ICC profile.

Bytes are kept as they were, except what the restore changed, which is updated in place:
- orientation: the pixels are turned upright on reading, so EXIF and XMP `tiff:Orientation` become 1 and
  face regions (MWG `mwg-rs` areas, Microsoft `MPReg` rectangles, both stored relative to the unrotated
  pixels) are turned with them (`upright_exif`, `upright_xmp`);
- pixel dimensions: EXIF PixelXDimension/PixelYDimension and IFD0 ImageWidth/ImageLength where present,
  XMP `exif:PixelXDimension`/`PixelYDimension`, `tiff:ImageWidth`/`ImageLength` and the regions'
  `mwg-rs:AppliedToDimensions` where present: the metadata describes the output, never a stale size;
- the EXIF Software tag, set to this program (added to an EXIF block that had none).
EXIF is edited inside its own TIFF structure (values patched where they stand, a grown IFD appended), so
maker notes, whose offsets point into that structure, stay valid; an EXIF thumbnail is kept as it is.

Each output format gets the metadata in its native place, by a small function that takes the encoded
(or header) bytes and an `OutputMetadata`, so any encoder can reuse it:
- `jpeg_with_metadata`: APP1 EXIF, APP1 XMP (+ extended XMP segments when over 64 KB), APP2 ICC,
  APP13 Photoshop 3.0 (IPTC and the other resources);
- `png_with_metadata`: iCCP, eXIf, iTXt `XML:com.adobe.xmp`, zTXt `Raw profile type iptc` (a Photoshop
  resource block as exiftool and ImageMagick write it);
- `webp_options`: Pillow's WebP encoder arguments (EXIF, XMP and ICCP chunks; WebP has no IPTC place);
- `add_tiff_metadata`: tags 700 (XMP), 33723 (IPTC), 34377 (Photoshop), 34675 (ICC), EXIF's IFD0 tags
  and its Exif/GPS/Interop IFDs, appended to any finished TIFF or BigTIFF (Pillow's, tifffile's, a strip
  encoder's) in a read/write stream, wherever in the stream it begins.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

EXIF_PREFIX = b"Exif\x00\x00"
XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXTENDED_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
PHOTOSHOP_HEADER = b"Photoshop 3.0\x00"
JPEG_SEGMENT_MAX = 65533  # payload bytes one APP segment holds (its length field counts itself)
XMP_STANDARD_MAX = JPEG_SEGMENT_MAX - len(XMP_JPEG_HEADER)  # 65504
_XMP_EXTENDED_CHUNK = JPEG_SEGMENT_MAX - len(XMP_EXTENDED_HEADER) - 32 - 8  # GUID, full length, offset
_IPTC_RESOURCE = 0x0404

# TIFF tags
_IMAGE_WIDTH, _IMAGE_LENGTH = 0x0100, 0x0101
_ORIENTATION = 0x0112
_SOFTWARE = 0x0131
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x8769, 0x8825, 0xA005
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003
_XMP_TAG, _IPTC_TAG, _PHOTOSHOP_TAG, _ICC_TAG = 700, 33723, 34377, 34675
_SUB_IFDS = (_EXIF_IFD, _GPS_IFD, _INTEROP_IFD)
_IMAGE_SOURCE_DATA = 37724  # Photoshop's layers in a TIFF: pixels of the old picture, not a description
_MAX_COPIED = 16 << 20  # EXIF values copied between structures; real photos carry well under 1 MB
# Tags that describe how a TIFF's pixels are stored: they belong to the encoder that wrote them, never to
# the metadata copied from the input (an EXIF block's IFD0 of a JPEG holds thumbnail pointers, a TIFF's
# its strips).
_STRUCTURAL_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281, 284, 290, 291}
    | {292, 293, 317, 320, 321, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 513, 514, 530, 531, 532}
)
_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_TYPE_FORMATS = {
    **{3: "H", 4: "I", 5: "II", 8: "h", 9: "i", 10: "ii", 11: "f", 12: "d", 13: "I"},
    **{16: "Q", 17: "q", 18: "Q"},  # BigTIFF's 8-byte integers and offsets
}
_SHORT, _LONG, _ASCII, _BYTE, _UNDEFINED, _LONG8 = 3, 4, 2, 1, 7, 16


@functools.cache
def software_name() -> str:
    """What the Software tag of every output says: this program and its version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"Neural Image Restore {version('neural-image-restore')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "Neural Image Restore"


@dataclass(frozen=True)
class OutputMetadata:
    """Everything an output file carries besides its pixels, already updated for the output."""

    icc_profile: bytes | None = None
    exif: bytes | None = None  # a TIFF structure, no "Exif\0\0" prefix
    xmp: bytes | None = None
    xmp_extended: bytes | None = None  # only JPEG needs it apart; others get it merged into `xmp`
    iptc: bytes | None = None  # IPTC-IIM records
    photoshop: bytes | None = None  # other Photoshop resources ("8BIM" blocks)

    def photoshop_block(self) -> bytes | None:
        """The Photoshop resource block holding the IPTC and the other resources (JPEG, PNG)."""
        block = (self.photoshop or b"") + (
            photoshop_resource(_IPTC_RESOURCE, self.iptc) if self.iptc else b""
        )
        return block or None


def for_output(
    *,
    width: int,
    height: int,
    icc_profile: bytes | None,
    exif: bytes | None,
    xmp: bytes | None,
    xmp_extended: bytes | None,
    iptc: bytes | None,
    photoshop: bytes | None,
    strip_gps: bool,
) -> OutputMetadata:
    """The input's metadata (already upright, see `upright_exif`/`upright_xmp`) made true of a
    width x height output: dimensions and Software updated, GPS removed when asked."""
    return OutputMetadata(
        icc_profile=icc_profile,
        exif=exif_for_output(exif, width, height, strip_gps) if exif else None,
        xmp=xmp_for_output(xmp, width, height, strip_gps) if xmp else None,
        xmp_extended=xmp_for_output(xmp_extended, width, height, strip_gps) if xmp_extended else None,
        iptc=iptc,
        photoshop=photoshop,
    )


def lost_notes(
    fmt: str, width: int, height: int, exif: bytes | None, iptc: bytes | None, photoshop: bytes | None
) -> list[str]:
    """What an output format cannot hold of the metadata, in words for the report (never dropped
    silently)."""
    notes = []
    if fmt == "webp" and (iptc or photoshop):
        notes.append(
            "WebP has no place for IPTC or Photoshop resources: those not written (EXIF, XMP, ICC are)"
        )
    written = exif_for_output(exif, width, height, strip_gps=False) if exif else None
    if fmt == "jpg" and written and len(EXIF_PREFIX) + len(written) > JPEG_SEGMENT_MAX:
        notes.append("EXIF larger than a JPEG segment holds (64 KB): not written (XMP, IPTC, ICC are)")
    return notes


# ------------------------------------------------------------------------------------------ TIFF structure


@dataclass
class _Entry:
    tag: int
    type: int
    count: int
    position: int  # of the 12-byte entry in the structure

    @property
    def size(self) -> int:
        return _TYPE_SIZES.get(self.type, 1) * self.count


class _TiffStructure:
    """A classic TIFF structure (an EXIF block, or a whole TIFF file's header and IFDs) in a bytearray."""

    def __init__(
        self, data: bytes | bytearray, *, copy: bool = True, base: int = 0, big: bool = False
    ) -> None:
        # copy=False reads a whole file in place (no second copy of its pixels); base > 0 builds bytes to
        # be appended to a file at that offset, so every offset written is already the file's.
        self.data: bytes | bytearray = bytearray(data) if copy else data
        if self.data[:4] not in (b"II*\x00", b"MM\x00*") and base == 0:
            raise ValueError("not a classic TIFF structure")
        self.order = "<" if self.data[:2] == b"II" else ">"
        self.base = base
        self.big = big  # BigTIFF layout for what is built here (20-byte entries, 8-byte offsets)
        self.copied = 0  # value bytes copied into this structure from another (_copy_entries)
        if base:
            self.data = bytearray()

    def unpack(self, fmt: str, position: int) -> tuple[int, ...]:
        return struct.unpack_from(self.order + fmt, self.data, position)

    def pack_into(self, fmt: str, position: int, *values: int) -> None:
        struct.pack_into(self.order + fmt, self.writable, position, *values)

    @property
    def writable(self) -> bytearray:
        """The bytes to change: a structure read in place (copy=False) is only read."""
        if not isinstance(self.data, bytearray):
            raise TypeError("this TIFF structure was read in place (copy=False): it is not written to")
        return self.data

    @property
    def first_ifd(self) -> int:
        return self.unpack("I", 4)[0]

    def entries(self, offset: int) -> list[_Entry]:
        (count,) = self.unpack("H", offset)
        if offset + 2 + 12 * count + 4 > len(self.data):
            raise ValueError("IFD runs past the end of the block")
        found = []
        for index in range(count):
            position = offset + 2 + 12 * index
            tag, kind, number = self.unpack("HHI", position)
            found.append(_Entry(tag, kind, number, position))
        return found

    def next_ifd(self, offset: int) -> int:
        (count,) = self.unpack("H", offset)
        return self.unpack("I", offset + 2 + 12 * count)[0]

    def value_position(self, entry: _Entry) -> int:
        return entry.position + 8 if entry.size <= 4 else self.unpack("I", entry.position + 8)[0]

    def raw_value(self, entry: _Entry) -> bytes:
        start = self.value_position(entry)
        if start + entry.size > len(self.data):
            raise ValueError(f"tag {entry.tag} points past the end of the block")
        return bytes(self.data[start : start + entry.size])

    def find(self, offset: int, tag: int) -> _Entry | None:
        return next((entry for entry in self.entries(offset) if entry.tag == tag), None)

    def sub_ifd(self, offset: int, tag: int) -> int | None:
        entry = self.find(offset, tag)
        if entry is None or entry.type not in (_LONG, 13) or entry.count != 1:
            return None
        target = self.unpack("I", entry.position + 8)[0]
        return target if 8 <= target < len(self.data) - 2 else None

    def set_number(self, entry: _Entry, value: int) -> None:
        """Overwrite a one-value SHORT/LONG in place (a SHORT too small for it becomes a LONG)."""
        kind = _SHORT if entry.type == _SHORT and value <= 0xFFFF else _LONG
        self.pack_into("HI", entry.position + 2, kind, 1)
        self.writable[entry.position + 8 : entry.position + 12] = b"\x00" * 4
        self.pack_into("H" if kind == _SHORT else "I", entry.position + 8, value)
        entry.type, entry.count = kind, 1

    def append(self, payload: bytes) -> int:
        """Add bytes at the end (on a word boundary, as TIFF wants) and return where they start."""
        data = self.writable
        if (self.base + len(data)) % 2:
            data += b"\x00"
        position = self.base + len(data)
        data += payload
        return position

    def entry_bytes(self, tag: int, kind: int, count: int, field: bytes) -> bytes:
        if self.big:
            return struct.pack(self.order + "HHQ", tag, kind, count) + field.ljust(8, b"\x00")
        return struct.pack(self.order + "HHI", tag, kind, count) + field.ljust(4, b"\x00")

    def value_field(self, kind: int, payload: bytes) -> bytes:
        """The value field for `payload`: inline when it fits, else an offset to appended bytes."""
        if len(payload) <= (8 if self.big else 4):
            return payload
        return self.offset_field(self.append(payload))

    def offset_field(self, position: int) -> bytes:
        return struct.pack(self.order + ("Q" if self.big else "I"), position)

    def ifd_table(self, entries: list[bytes]) -> bytes:
        """An IFD of `entries` (already sorted) with no next IFD."""
        count = struct.pack(self.order + ("Q" if self.big else "H"), len(entries))
        return count + b"".join(entries) + b"\x00" * (8 if self.big else 4)

    def rewrite_ifd(self, offset: int, entries: list[bytes], pointer_position: int | None) -> int:
        """Write an IFD with `entries` (12 bytes each, any order) in place when it fits, else at the end,
        then point `pointer_position` (the header's or a sub-IFD tag's value) at it."""
        (old_count,) = self.unpack("H", offset)
        next_ifd = self.next_ifd(offset)
        entries = sorted(entries, key=lambda entry: struct.unpack(self.order + "H", entry[:2])[0])
        table = struct.pack(self.order + "H", len(entries)) + b"".join(entries)
        table += struct.pack(self.order + "I", next_ifd)
        if len(entries) <= old_count:
            end = offset + 2 + 12 * old_count + 4
            self.writable[offset:end] = table.ljust(end - offset, b"\x00")
            return offset
        position = self.append(table)  # the old table stays as unreferenced bytes: nothing else moves
        if pointer_position is not None:
            self.pack_into("I", pointer_position, position)
        return position


# ---------------------------------------------------------------------------------------------------- EXIF


def exif_structure(raw: bytes | None) -> bytes | None:
    """An EXIF block as found in a file (with or without "Exif\\0\\0") as a bare TIFF structure, or None
    when it is not one (some writers put the prefix elsewhere; those are found by searching)."""
    if not raw:
        return None
    raw = raw.removeprefix(EXIF_PREFIX)
    if raw[:4] in (b"II*\x00", b"MM\x00*"):
        return bytes(raw)
    return None


def upright_exif(exif: bytes) -> bytes:
    """The EXIF block with Orientation 1 (the pixels were turned upright), changed in place."""
    tiff = _TiffStructure(exif)
    entry = tiff.find(tiff.first_ifd, _ORIENTATION)
    if entry is not None and entry.type == _SHORT and entry.count == 1:
        tiff.set_number(entry, 1)
    return bytes(tiff.data)


def exif_for_output(exif: bytes, width: int, height: int, strip_gps: bool) -> bytes | None:
    """Pixel dimensions and Software updated, GPS removed if asked; every other byte as it was.
    None when the block is not a readable TIFF structure (nothing half-edited is written)."""
    try:
        tiff = _TiffStructure(exif)
        ifd0 = tiff.first_ifd
        for tag, value in ((_IMAGE_WIDTH, width), (_IMAGE_LENGTH, height)):
            _update_number(tiff, ifd0, tag, value)
        exif_ifd = tiff.sub_ifd(ifd0, _EXIF_IFD)
        if exif_ifd is not None:
            _update_number(tiff, exif_ifd, _PIXEL_X, width)
            _update_number(tiff, exif_ifd, _PIXEL_Y, height)
        if strip_gps:
            _remove_gps(tiff)
        _set_software(tiff, software_name())
    except (ValueError, struct.error):
        return None
    return bytes(tiff.data)


def _update_number(tiff: _TiffStructure, ifd: int, tag: int, value: int) -> None:
    entry = tiff.find(ifd, tag)
    if entry is not None and entry.type in (_SHORT, _LONG) and entry.count == 1:
        tiff.set_number(entry, value)


def _set_software(tiff: _TiffStructure, name: str) -> None:
    """Point IFD0's Software at `name`: written over the old string where it fits, else appended."""
    text = name.encode("ascii") + b"\x00"
    ifd0 = tiff.first_ifd
    entry = tiff.find(ifd0, _SOFTWARE)
    if entry is not None and entry.size > 4 and entry.size >= len(text):
        start = tiff.value_position(entry)
        tiff.writable[start : start + entry.size] = text.ljust(entry.size, b"\x00")
        tiff.pack_into("HI", entry.position + 2, _ASCII, len(text))
        return
    if entry is not None:
        field = tiff.value_field(_ASCII, text)
        tiff.pack_into("HI", entry.position + 2, _ASCII, len(text))
        tiff.writable[entry.position + 8 : entry.position + 12] = field.ljust(4, b"\x00")
        return
    entries = [bytes(tiff.data[e.position : e.position + 12]) for e in tiff.entries(ifd0)]
    entries.append(tiff.entry_bytes(_SOFTWARE, _ASCII, len(text), tiff.value_field(_ASCII, text)))
    tiff.rewrite_ifd(ifd0, entries, pointer_position=4)


def _remove_gps(tiff: _TiffStructure) -> None:
    """Drop the GPS IFD pointer and zero the GPS IFD and its values: the position must not stay in the
    file as unreferenced bytes."""
    ifd0 = tiff.first_ifd
    gps = tiff.sub_ifd(ifd0, _GPS_IFD)
    if gps is not None:
        for entry in tiff.entries(gps):
            if entry.size > 4:
                start = tiff.value_position(entry)
                tiff.writable[start : start + entry.size] = b"\x00" * entry.size
        (count,) = tiff.unpack("H", gps)
        tiff.writable[gps : gps + 2 + 12 * count + 4] = b"\x00" * (2 + 12 * count + 4)
    kept = [bytes(tiff.data[e.position : e.position + 12]) for e in tiff.entries(ifd0) if e.tag != _GPS_IFD]
    tiff.rewrite_ifd(ifd0, kept, pointer_position=4)


def exif_from_tiff_file(data: bytes) -> bytes | None:
    """A TIFF file's photo description as an EXIF block: IFD0's descriptive tags (Make, Model, dates,
    Artist, Copyright, resolution, Orientation...) and its Exif, GPS and Interop IFDs, copied with
    every value; what describes the storage (strips, compression, bit depth) is left to the output."""
    try:
        source = _TiffStructure(data, copy=False)
        target = _TiffStructure(
            b"II*\x00\x08\x00\x00\x00" if source.order == "<" else b"MM\x00*\x00\x00\x00\x08"
        )
        skip = _STRUCTURAL_TAGS | {_XMP_TAG, _IPTC_TAG, _PHOTOSHOP_TAG, _ICC_TAG, _IMAGE_SOURCE_DATA}
        entries = _copy_entries(source, source.first_ifd, target, skip)
    except (ValueError, struct.error):
        return None
    if not entries:
        return None
    position = target.append(target.ifd_table(entries))
    target.pack_into("I", 4, position)
    return bytes(target.data)


def _copy_entries(
    source: _TiffStructure, ifd: int, target: _TiffStructure, skip: frozenset[int]
) -> list[bytes]:
    """Entries of `source`'s IFD at `ifd` rebuilt in `target` (values appended there, byte order
    converted, Exif/GPS/Interop IFDs copied the same way), sorted by tag."""
    copied = []
    for entry in source.entries(ifd):
        if entry.tag in skip or entry.type not in _TYPE_SIZES:
            continue
        if entry.tag in _SUB_IFDS:
            child = source.sub_ifd(ifd, entry.tag)
            if child is None:
                continue
            # Exif holds Interop; nothing deeper is followed, so an IFD pointing at itself ends here.
            below = frozenset({_EXIF_IFD, _GPS_IFD}) if entry.tag == _EXIF_IFD else frozenset(_SUB_IFDS)
            child_entries = _copy_entries(source, child, target, below)
            field = target.offset_field(target.append(target.ifd_table(child_entries)))
            copied.append(target.entry_bytes(entry.tag, _LONG8 if target.big else _LONG, 1, field))
            continue
        target.copied += entry.size
        if target.copied > _MAX_COPIED:  # entries may all point at the same huge value: bounded work
            raise ValueError("EXIF values larger than any photo's")
        payload = _convert_order(source.raw_value(entry), entry.type, source.order, target.order)
        copied.append(
            target.entry_bytes(entry.tag, entry.type, entry.count, target.value_field(entry.type, payload))
        )
    return sorted(copied, key=lambda raw: struct.unpack(target.order + "H", raw[:2])[0])


def _convert_order(payload: bytes, kind: int, source: str, target: str) -> bytes:
    fmt = _TYPE_FORMATS.get(kind)
    if fmt is None or source == target:
        return payload  # bytes, text and undefined (maker notes included) have no byte order
    size = struct.calcsize("<" + fmt)
    items = [struct.unpack_from(source + fmt, payload, i) for i in range(0, len(payload), size)]
    return b"".join(struct.pack(target + fmt, *item) for item in items)


# ----------------------------------------------------------------------------------------------------- XMP

_NS_TIFF = b"http://ns.adobe.com/tiff/1.0/"
_NS_EXIF = b"http://ns.adobe.com/exif/1.0/"
_NS_MWG_REGIONS = b"http://www.metadataworkinggroup.com/schemas/regions/"
_NS_AREA = b"http://ns.adobe.com/xmp/sType/Area#"
_NS_DIMENSIONS = b"http://ns.adobe.com/xap/1.0/sType/Dimensions#"
_NS_MP_REGION = b"http://ns.microsoft.com/photo/1.2/t/Region#"
_NS_XMP_NOTE = b"http://ns.adobe.com/xmp/note/"
# Every pattern below bounds what it may scan from one starting point (a value is at most _VALUE bytes), so
# a hostile packet of many megabytes costs linear time, never a quadratic backtrack.
_VALUE = 256
_ATTRIBUTE_VALUE = rb"""(?P<quote>["'])(?P<value>[^"'<>]{0,%d})(?P=quote)""" % _VALUE


def _prefixes(packet: bytes, namespace: bytes) -> list[bytes]:
    """The prefixes a packet binds to `namespace` (usually one: tiff, exif, mwg-rs...)."""
    pattern = rb"""xmlns:([\w.-]{1,64})\s{0,8}=\s{0,8}["']""" + re.escape(namespace) + rb"""["']"""
    return sorted(set(re.findall(pattern, packet)))


def _edit_property(
    packet: bytes, namespace: bytes, name: bytes, edit: Callable[[bytes], bytes | None]
) -> bytes:
    """Replace the simple value of `namespace`:`name` wherever it stands, as an attribute
    (tiff:Orientation="6") or an element (<tiff:Orientation>6</tiff:Orientation>); `edit` gets the old
    value and returns the new one (None leaves it). Nothing else in the packet moves."""
    for prefix in _prefixes(packet, namespace):
        qualified = re.escape(prefix + b":" + name)
        # Patterns start with the name itself so the regex engine skips ahead by plain search; the
        # attribute's leading space is checked by hand (_after_space).
        attribute = re.compile(rb"(" + qualified + rb"\s{0,8}=\s{0,8})" + _ATTRIBUTE_VALUE)
        element = re.compile(rb"(<" + qualified + rb">)([^<]{0,%d})(</" % _VALUE + qualified + rb">)")

        def in_attribute(match: re.Match[bytes]) -> bytes:
            new = edit(match["value"]) if _after_space(match) else None
            return match[0] if new is None else match[1] + match["quote"] + new + match["quote"]

        def in_element(match: re.Match[bytes]) -> bytes:
            new = edit(match.group(2).strip())
            return match.group(0) if new is None else match.group(1) + new + match.group(3)

        packet = element.sub(in_element, attribute.sub(in_attribute, packet))
    return packet


def _after_space(match: re.Match[bytes]) -> bool:
    """Whether a match starts a new attribute (not the tail of a longer name such as xtiff:Orientation)."""
    return match.start() > 0 and match.string[match.start() - 1 : match.start()].isspace()


def _set_to(value: int) -> Callable[[bytes], bytes | None]:
    return lambda _old: str(value).encode()


def upright_xmp(packet: bytes, orientation: int) -> bytes:
    """The XMP packet for pixels turned upright from `orientation`: tiff:Orientation 1 and the face
    regions (MWG and Microsoft, relative to the stored pixels) turned the same way."""
    original = len(packet)
    packet = _edit_property(packet, _NS_TIFF, b"Orientation", _set_to(1))
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        packet = _turn_mwg_regions(packet, orientation)
        packet = _edit_property(
            packet, _NS_MP_REGION, b"Rectangle", lambda value: _turn_mp_rectangle(value, orientation)
        )
    return _same_length(packet, original)


def xmp_for_output(packet: bytes, width: int, height: int, strip_gps: bool) -> bytes:
    """Pixel dimensions in the XMP made the output's (exif:PixelX/YDimension, tiff:ImageWidth/Length,
    the regions' AppliedToDimensions), and exif:GPS* properties removed when asked."""
    original = len(packet)
    for namespace, name, value in (
        (_NS_EXIF, b"PixelXDimension", width),
        (_NS_EXIF, b"PixelYDimension", height),
        (_NS_TIFF, b"ImageWidth", width),
        (_NS_TIFF, b"ImageLength", height),
        (_NS_DIMENSIONS, b"w", width),
        (_NS_DIMENSIONS, b"h", height),
    ):
        packet = _edit_property(packet, namespace, name, _set_to(value))
    if strip_gps:
        packet = _remove_gps_properties(packet)
    return _same_length(packet, original)


def _remove_gps_properties(packet: bytes) -> bytes:
    for prefix in _prefixes(packet, _NS_EXIF):
        name = re.escape(prefix) + rb":GPS\w{0,64}"
        attribute = re.compile(name + rb"\s{0,8}=\s{0,8}" + _ATTRIBUTE_VALUE)
        packet = attribute.sub(lambda match: b"" if _after_space(match) else match.group(0), packet)
        bounded = rb"[^<>]{0,%d}" % _VALUE
        packet = re.sub(rb"<(" + name + rb")\b" + bounded + rb">" + bounded + rb"</\1>", b"", packet)
    return packet


def _same_length(edited: bytes, length: int) -> bytes:
    """Take from (or give to) the packet's trailing padding what an edit added (or removed), so the
    packet keeps its size where it can: XMP's padding exists for exactly this in-place editing."""
    change = len(edited) - length
    end = edited.rfind(b"<?xpacket end=")
    if change == 0 or end < 0:
        return edited
    start = len(edited[:end].rstrip(b" \t\r\n"))
    padding = edited[start:end]
    if change > 0:
        if b" " * change not in padding:
            return edited
        padding = padding.replace(b" " * change, b"", 1)
    else:
        padding += b" " * -change
    return edited[:start] + padding + edited[end:]


def _format(value: float) -> bytes:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return (text if text not in ("", "-0") else "0").encode()


def _turn_point(x: float, y: float, orientation: int) -> tuple[float, float]:
    """A normalised point of the stored image where apply_orientation puts it in the upright image."""
    return {
        2: (1 - x, y),
        3: (1 - x, 1 - y),
        4: (x, 1 - y),
        5: (y, x),
        6: (1 - y, x),
        7: (1 - y, 1 - x),
        8: (y, 1 - x),
    }.get(orientation, (x, y))


def _turn_box(
    x0: float, y0: float, x1: float, y1: float, orientation: int
) -> tuple[float, float, float, float]:
    (ax, ay), (bx, by) = _turn_point(x0, y0, orientation), _turn_point(x1, y1, orientation)
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def _turn_mp_rectangle(value: bytes, orientation: int) -> bytes | None:
    """Microsoft's "left, top, width, height" (normalised) turned with the pixels."""
    try:
        left, top, width, height = (float(part) for part in value.split(b","))
    except ValueError:
        return None
    x0, y0, x1, y1 = _turn_box(left, top, left + width, top + height, orientation)
    return b", ".join(_format(number) for number in (x0, y0, x1 - x0, y1 - y0))


def _turn_mwg_regions(packet: bytes, orientation: int) -> bytes:
    """Each normalised mwg-rs:Area (centre x, y and size w, h) turned with the pixels."""
    for region_prefix in _prefixes(packet, _NS_MWG_REGIONS):
        for area_prefix in _prefixes(packet, _NS_AREA):
            packet = _each_element(
                packet,
                region_prefix + b":Area",
                functools.partial(_turn_area, prefix=area_prefix, orientation=orientation),
            )
    return packet


def _each_element(packet: bytes, name: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """`edit` applied to each <name .../> or <name ...>...</name> element, found by plain searches (one
    pass over the packet; an element left open ends the walk)."""
    opener = re.compile(rb"<" + re.escape(name) + rb"[\s/>]")
    closer = b"</" + name + b">"
    pieces, position = [], 0
    while (found := opener.search(packet, position)) is not None:
        tag_end = packet.find(b">", found.start())
        if tag_end < 0:
            break
        end = tag_end + 1 if packet[tag_end - 1 : tag_end] == b"/" else packet.find(closer, tag_end)
        if end < 0:
            break
        end = end if packet[tag_end - 1 : tag_end] == b"/" else end + len(closer)
        pieces += [packet[position : found.start()], edit(packet[found.start() : end])]
        position = end
    return b"".join([*pieces, packet[position:]])


def _between_groups(text: bytes) -> Callable[[re.Match[bytes]], bytes]:
    """A re.sub replacement: `text` put between the match's groups 1 and 2 (what stood there goes)."""
    return lambda match: match.group(1) + text + match.group(2)


def _turn_area(block: bytes, prefix: bytes, orientation: int) -> bytes:
    fields: dict[bytes, float] = {}
    for name in (b"x", b"y", b"w", b"h", b"unit"):
        qualified = re.escape(prefix + b":" + name)
        attribute = re.search(rb"\s" + qualified + rb"\s{0,8}=\s{0,8}" + _ATTRIBUTE_VALUE, block)
        element = re.search(rb"<" + qualified + rb">([^<]{0,%d})<" % _VALUE, block)
        value = attribute["value"] if attribute else element[1] if element else None
        if value is None:
            return block
        if name == b"unit":
            if value.strip() != b"normalized":
                return block  # pixel areas would need the stored size; not written by any tool we know
            continue
        try:
            fields[name] = float(value)
        except ValueError:
            return block
    x, y, w, h = fields[b"x"], fields[b"y"], fields[b"w"], fields[b"h"]
    x0, y0, x1, y1 = _turn_box(x - w / 2, y - h / 2, x + w / 2, y + h / 2, orientation)
    new = {b"x": (x0 + x1) / 2, b"y": (y0 + y1) / 2, b"w": x1 - x0, b"h": y1 - y0}
    for name, value in new.items():
        qualified = re.escape(prefix + b":" + name)
        replacement = _between_groups(_format(value))
        block = re.sub(
            rb"""(\s""" + qualified + rb"""\s{0,8}=\s{0,8}["'])[^"'<>]{0,%d}(["'])""" % _VALUE,
            replacement,
            block,
        )
        block = re.sub(rb"(<" + qualified + rb">)[^<]{0,%d}(<)" % _VALUE, replacement, block)
    return block


def merge_extended_xmp(standard: bytes, extended: bytes | None) -> bytes:
    """One packet from JPEG's standard and extended XMP, for formats with no 64 KB limit: the
    extended part's rdf:Description elements moved into the standard packet's rdf:RDF, and the
    xmpNote:HasExtendedXMP pointer (now pointing nowhere) removed."""
    if not extended:
        return standard
    opening = extended.find(b"<rdf:RDF")
    start = extended.find(b">", opening) + 1 if opening >= 0 else 0
    end = extended.rfind(b"</rdf:RDF>")
    closing = standard.rfind(b"</rdf:RDF>")
    if opening < 0 or start <= 0 or end < start or closing < 0:
        return standard
    merged = standard[:closing] + extended[start:end] + standard[closing:]
    for prefix in _prefixes(merged, _NS_XMP_NOTE):
        note = re.escape(prefix + b":HasExtendedXMP")
        merged = re.sub(rb"\s" + note + rb"\s{0,8}=\s{0,8}" + _ATTRIBUTE_VALUE, b"", merged)
        merged = re.sub(rb"<" + note + rb">[^<]{0,%d}</" % _VALUE + note + rb">", b"", merged)
    return merged


# ------------------------------------------------------------------------------------ Photoshop resources


def photoshop_resource(resource_id: int, payload: bytes) -> bytes:
    """One "8BIM" image resource with an empty name, padded to an even length."""
    return (
        b"8BIM"
        + struct.pack(">H", resource_id)
        + b"\x00\x00"
        + struct.pack(">I", len(payload))
        + payload
        + (b"\x00" if len(payload) % 2 else b"")
    )


def _photoshop_resources(block: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(id, payload, the resource's bytes as stored) for each "8BIM" resource; stops at damage."""
    position = 0
    while position + 12 <= len(block) and block[position : position + 4] == b"8BIM":
        resource_id = int.from_bytes(block[position + 4 : position + 6], "big")
        name_length = block[position + 6]
        name_end = position + 6 + ((name_length + 2) & ~1)  # Pascal string padded to even
        if name_end + 4 > len(block):
            return
        size = int.from_bytes(block[name_end : name_end + 4], "big")
        end = name_end + 4 + size + (size & 1)
        if name_end + 4 + size > len(block):
            return
        yield resource_id, block[name_end + 4 : name_end + 4 + size], block[position:end]
        position = end


def split_photoshop(block: bytes | None) -> tuple[bytes | None, bytes | None]:
    """A Photoshop resource block -> (IPTC-IIM, the other resources as stored)."""
    if not block:
        return None, None
    iptc, others = None, b""
    for resource_id, payload, stored in _photoshop_resources(block):
        if resource_id == _IPTC_RESOURCE and iptc is None:
            iptc = payload
        else:
            others += stored
    return iptc or None, others or None


def iptc_from_raw_profile(text: str | bytes | None) -> tuple[bytes | None, bytes | None]:
    """PNG's "Raw profile type iptc" (ImageMagick's hex text: a name line, a length line, hex digits)
    -> (IPTC-IIM, other Photoshop resources); it may hold bare IIM or a Photoshop resource block."""
    if not text:
        return None, None
    raw = text.encode("latin-1") if isinstance(text, str) else text
    lines = raw.strip().split(b"\n")
    try:
        length = int(lines[1])
        payload = bytes.fromhex(b"".join(lines[2:]).decode("ascii"))[:length]
    except (IndexError, ValueError):
        return None, None
    if payload.startswith(b"\x1c"):
        return payload, None
    return split_photoshop(payload)


def _raw_profile(name: bytes, payload: bytes) -> bytes:
    digits = payload.hex().encode()
    lines = b"\n".join(digits[i : i + 72] for i in range(0, len(digits), 72))
    return b"\n" + name + b"\n" + f"{len(payload):8d}".encode() + b"\n" + lines + b"\n"


# ---------------------------------------------------------------------------------------------------- JPEG


def jpeg_metadata(applist: list[tuple[str, bytes]]) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(standard XMP, extended XMP reassembled, Photoshop resource block) from a JPEG's APP segments
    (Pillow's `applist`). Extended chunks are joined in offset order, only those of the GUID the
    standard packet names, and only when complete."""
    xmp, photoshop = None, b""
    chunks: dict[bytes, dict[int, bytes]] = {}
    totals: dict[bytes, int] = {}
    for marker, payload in applist:
        if marker == "APP1" and payload.startswith(XMP_JPEG_HEADER) and xmp is None:
            xmp = payload[len(XMP_JPEG_HEADER) :]
        elif marker == "APP1" and payload.startswith(XMP_EXTENDED_HEADER):
            head = len(XMP_EXTENDED_HEADER)
            guid = payload[head : head + 32]
            total, offset = struct.unpack(">II", payload[head + 32 : head + 40])
            chunks.setdefault(guid, {})[offset] = payload[head + 40 :]
            totals[guid] = total
        elif marker == "APP13" and payload.startswith(PHOTOSHOP_HEADER):
            photoshop += payload[len(PHOTOSHOP_HEADER) :]
    return xmp, _extended_xmp(xmp, chunks, totals), photoshop or None


def _extended_xmp(
    xmp: bytes | None, chunks: dict[bytes, dict[int, bytes]], totals: dict[bytes, int]
) -> bytes | None:
    if not xmp or not chunks:
        return None
    named = re.search(rb"""HasExtendedXMP\s{0,8}(?:=\s{0,8}["']|>)([0-9A-Fa-f]{32})""", xmp)
    guid = named.group(1).upper() if named else None
    pieces = chunks.get(guid or b"", {})
    joined = b"".join(pieces[offset] for offset in sorted(pieces))
    return joined if pieces and len(joined) == totals.get(guid or b"") else None


def jpeg_segments(metadata: OutputMetadata) -> bytes:
    """APP1 EXIF, APP1 XMP (+ extended XMP), APP2 ICC and APP13 Photoshop segments, in that order."""
    segments = []
    if metadata.exif:
        payload = EXIF_PREFIX + metadata.exif
        if len(payload) <= JPEG_SEGMENT_MAX:  # an EXIF block never fits a second segment: JPEG has none
            segments.append(_segment(0xE1, payload))
    segments.extend(_xmp_segments(metadata.xmp, metadata.xmp_extended))
    if metadata.icc_profile:
        icc = metadata.icc_profile
        pieces = [icc[i : i + 65519] for i in range(0, len(icc), 65519)]
        for number, piece in enumerate(pieces, start=1):
            segments.append(_segment(0xE2, b"ICC_PROFILE\x00" + bytes([number, len(pieces)]) + piece))
    block = metadata.photoshop_block()
    if block:
        room = JPEG_SEGMENT_MAX - len(PHOTOSHOP_HEADER)
        for start in range(0, len(block), room):
            segments.append(_segment(0xED, PHOTOSHOP_HEADER + block[start : start + room]))
    return b"".join(segments)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _xmp_segments(xmp: bytes | None, extended: bytes | None) -> list[bytes]:
    """The standard packet in one APP1; what is beyond 64 KB as extended XMP (XMP spec part 3, 1.1.3.1):
    a packet too large for one segment goes whole into the extended part, and a small standard packet
    names it, so nothing is cut off."""
    if not xmp:
        return []
    if len(xmp) > XMP_STANDARD_MAX:
        extended, xmp = merge_extended_xmp(xmp, extended), b""
    if extended:
        guid = hashlib.md5(extended, usedforsecurity=False).hexdigest().upper().encode()
        xmp = _with_extended_guid(xmp, guid)
    segments = [_segment(0xE1, XMP_JPEG_HEADER + xmp)]
    if extended:
        for offset in range(0, len(extended), _XMP_EXTENDED_CHUNK):
            piece = extended[offset : offset + _XMP_EXTENDED_CHUNK]
            head = XMP_EXTENDED_HEADER + guid + struct.pack(">II", len(extended), offset)
            segments.append(_segment(0xE1, head + piece))
    return segments


def _with_extended_guid(xmp: bytes, guid: bytes) -> bytes:
    """The standard packet naming the extended part's GUID (its MD5): updated where it is named, or a
    minimal packet that names it when the whole XMP moved to the extended part."""
    named = re.compile(rb"""(HasExtendedXMP\s{0,8}(?:=\s{0,8}["']|>))[0-9A-Fa-f]{32}""")
    if named.search(xmp):
        return named.sub(lambda match: match.group(1) + guid, xmp)
    return (
        b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:xmpNote="http://ns.adobe.com/xmp/note/"'
        b' xmpNote:HasExtendedXMP="' + guid + b'"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def jpeg_with_metadata(data: bytes | memoryview, metadata: OutputMetadata) -> bytes:
    """A JPEG with the metadata segments inserted after SOI and its APP0 (JFIF), if any."""
    position = 2
    if bytes(data[2:4]) == b"\xff\xe0":
        position = 4 + int.from_bytes(data[4:6], "big")
    return b"".join([data[:position], jpeg_segments(metadata), data[position:]])


# ----------------------------------------------------------------------------------------------------- PNG


def png_chunks(metadata: OutputMetadata) -> bytes:
    """iCCP, eXIf, iTXt XMP and zTXt IPTC chunks, to follow IHDR (iCCP must precede IDAT and PLTE)."""
    chunks = b""
    if metadata.icc_profile:
        chunks += png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(metadata.icc_profile))
    if metadata.exif:
        chunks += png_chunk(b"eXIf", metadata.exif)
    xmp = merge_extended_xmp(metadata.xmp, metadata.xmp_extended) if metadata.xmp else None
    if xmp:
        chunks += png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
    block = metadata.photoshop_block()
    if block:
        profile = _raw_profile(b"IPTC profile", block)
        chunks += png_chunk(b"zTXt", b"Raw profile type iptc\x00\x00" + zlib.compress(profile))
    return chunks


def png_with_metadata(data: bytes | memoryview, metadata: OutputMetadata) -> bytes:
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return b"".join([data[:ihdr_end], png_chunks(metadata), data[ihdr_end:]])


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


# ---------------------------------------------------------------------------------------------------- WebP


def webp_options(metadata: OutputMetadata) -> dict[str, bytes]:
    """Pillow WebP encoder arguments: ICCP, EXIF (bare TIFF structure, as the WebP spec says) and XMP
    chunks. WebP defines no place for IPTC or Photoshop resources: those are not written."""
    options = {}
    if metadata.icc_profile:
        options["icc_profile"] = metadata.icc_profile
    if metadata.exif:
        options["exif"] = metadata.exif
    if metadata.xmp:
        options["xmp"] = merge_extended_xmp(metadata.xmp, metadata.xmp_extended)
    return options


# ---------------------------------------------------------------------------------------------------- TIFF


def tiff_raw_tags(data: bytes, tags: tuple[int, ...]) -> dict[int, bytes]:
    """The raw bytes of some IFD0 tags of a TIFF file (Pillow decodes 33723 typed as LONG into numbers
    and warns; the bytes are what we carry)."""
    try:
        tiff = _TiffStructure(data, copy=False)
        return {
            entry.tag: tiff.raw_value(entry) for entry in tiff.entries(tiff.first_ifd) if entry.tag in tags
        }
    except (ValueError, struct.error):
        return {}


def add_tiff_metadata(stream: BinaryIO, metadata: OutputMetadata, start: int = 0) -> None:
    """Give a TIFF or BigTIFF that begins at `start` in a seekable read/write stream (the encoder's
    BytesIO, or a file on disk) the metadata: the values and a new IFD0 (the encoder's own entries plus
    the metadata's) are appended at the end and the header pointed at it; no pixel byte moves, so a
    strip encoder can call it once its file is complete."""
    stream.seek(start)
    header = stream.read(16)
    if header[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return
    order = "<" if header[:2] == b"II" else ">"
    big = header[2:4] in (b"+\x00", b"\x00+")
    offset, count_format, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    pointer_position = 8 if big else 4
    (ifd0,) = struct.unpack_from(order + offset, header, pointer_position)
    stream.seek(start + ifd0)
    (count,) = struct.unpack(order + count_format, stream.read(struct.calcsize(count_format)))
    table = stream.read(entry_size * count + struct.calcsize(offset))
    own = {
        struct.unpack_from(order + "H", table, entry_size * i)[0]: table[
            entry_size * i : entry_size * (i + 1)
        ]
        for i in range(count)
    }
    next_ifd = table[entry_size * count :]
    end = stream.seek(0, io.SEEK_END) - start
    entries = _metadata_entries(order, metadata, end, big)
    if not entries.tags:
        return
    merged = {tag: raw for tag, raw in own.items() if tag in _STRUCTURAL_TAGS or tag not in entries.tags}
    merged.update(entries.tags)
    ifd = struct.pack(order + count_format, len(merged)) + b"".join(merged[tag] for tag in sorted(merged))
    payload = entries.values + (b"\x00" if (end + len(entries.values)) % 2 else b"")
    position = end + len(payload)
    if not big and position + len(ifd) + len(next_ifd) > 0xFFFFFFFF:
        return  # beyond a classic TIFF's 4 GB offsets
    stream.write(payload + ifd + next_ifd)
    stream.seek(start + pointer_position)
    stream.write(struct.pack(order + offset, position))
    stream.seek(0, io.SEEK_END)


@dataclass
class _Appended:
    tags: dict[int, bytes]  # tag -> its entry (12 bytes, 20 in a BigTIFF)
    values: bytes  # what the entries point into, to be written at the file's end


def _metadata_entries(order: str, metadata: OutputMetadata, base: int, big: bool) -> _Appended:
    """The metadata's IFD0 entries for a TIFF (or BigTIFF) written in `order`, with their values laid
    out to be appended at offset `base` (EXIF's IFD0 tags and sub-IFDs copied, byte order converted)."""
    target = _TiffStructure(b"II" if order == "<" else b"MM", base=base, big=big)
    entries: dict[int, bytes] = {}
    exif = (
        _TiffStructure(metadata.exif)
        if metadata.exif and metadata.exif[:4] in (b"II*\x00", b"MM\x00*")
        else None
    )
    if exif is not None:
        try:
            skip = _STRUCTURAL_TAGS | {_XMP_TAG, _IPTC_TAG, _PHOTOSHOP_TAG, _ICC_TAG, 0x0201, 0x0202}
            for raw in _copy_entries(exif, exif.first_ifd, target, skip):
                entries[struct.unpack(order + "H", raw[:2])[0]] = raw
        except (ValueError, struct.error):
            entries.clear()
    xmp = merge_extended_xmp(metadata.xmp, metadata.xmp_extended) if metadata.xmp else None
    others = metadata.photoshop
    # IPTC-NAA is typed LONG by Photoshop and exiftool (exiftool calls anything else non-standard), so
    # the records are padded to whole 4-byte values.
    iptc = metadata.iptc + b"\x00" * (-len(metadata.iptc) % 4) if metadata.iptc else None
    for tag, kind, payload in (
        (_XMP_TAG, _BYTE, xmp),
        (_IPTC_TAG, _LONG, iptc),
        (_PHOTOSHOP_TAG, _BYTE, others),
        (_ICC_TAG, _UNDEFINED, metadata.icc_profile),
    ):
        if payload:
            count = len(payload) // _TYPE_SIZES[kind]
            entries[tag] = target.entry_bytes(tag, kind, count, target.value_field(kind, payload))
    return _Appended(entries, bytes(target.data))
