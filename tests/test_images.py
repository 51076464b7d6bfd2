"""Decoding untrusted images and reading files, folders and zip archives safely."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from expr_core.errors import BadInput
from expr_core.vision import images
from expr_core.vision.images import decode_image, iter_path_images, iter_zip_images, open_zip, read_file
from tests.conftest import REPO


# -- decode_image -----------------------------------------------------------------------------------
def test_decodes_jpeg_and_png_to_bgr(astronaut_bgr, astronaut_jpeg):
    from_jpeg = decode_image(astronaut_jpeg, "a.jpg")
    assert from_jpeg.shape == (512, 512, 3) and from_jpeg.dtype == np.uint8
    assert np.abs(from_jpeg.astype(int) - astronaut_bgr).mean() < 3  # BGR order kept, not swapped to RGB
    _ok, png = cv2.imencode(".png", astronaut_bgr)
    assert np.array_equal(decode_image(png.tobytes(), "a.png"), astronaut_bgr)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1"])
def test_other_pixel_formats_become_bgr(mode):
    buf = io.BytesIO()
    Image.new(mode, (20, 10)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), "x.png").shape == (10, 20, 3)


def test_exif_orientation_is_applied(astronaut_bgr):
    """A phone photo stored sideways with 'rotate 90' in EXIF is decoded upright."""
    sideways = Image.fromarray(
        cv2.cvtColor(cv2.rotate(astronaut_bgr, cv2.ROTATE_90_COUNTERCLOCKWISE), cv2.COLOR_BGR2RGB)
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buf = io.BytesIO()
    sideways.save(buf, "JPEG", quality=95, exif=exif)
    upright = decode_image(buf.getvalue(), "phone.jpg")
    assert np.abs(upright.astype(int) - astronaut_bgr).mean() < 4


def test_empty_file():
    with pytest.raises(BadInput, match=r"^empty\.jpg: the file is empty \(0 bytes\)"):
        decode_image(b"", "empty.jpg")


def test_text_renamed_to_jpg():
    with pytest.raises(BadInput, match="notes.jpg: not an image file"):
        decode_image(b"Dear diary, today I renamed a text file.\n" * 10, "notes.jpg")


def test_truncated_jpeg(astronaut_jpeg):
    with pytest.raises(BadInput, match="cut.jpg: the image is truncated or corrupt"):
        decode_image(astronaut_jpeg[: len(astronaut_jpeg) // 2], "cut.jpg")


def test_corrupt_png_checksum(astronaut_bgr):
    png = bytearray(cv2.imencode(".png", astronaut_bgr)[1].tobytes())
    png[len(png) // 2] ^= 0xFF
    with pytest.raises(BadInput, match="bad.png: the image is truncated or corrupt"):
        decode_image(bytes(png), "bad.png")


@pytest.mark.parametrize("width,height", [(20_000, 20_000), (8_000, 6_000)])
def test_huge_image_is_refused_before_decoding(png_with_size, width, height):
    data = png_with_size(width, height)
    assert len(data) < 200_000  # cheap to store, enormous to decode
    with pytest.raises(BadInput) as info:
        decode_image(data, "huge.png")
    message = str(info.value)
    assert message.startswith("huge.png:") and "40 megapixel limit" in message and "scale it down" in message
    assert "truncated" not in message


def test_image_just_under_the_limit_is_fine(png_with_size):
    assert decode_image(png_with_size(64, 32), "ok.png").shape == (32, 64, 3)


# -- zip archives -----------------------------------------------------------------------------------
def test_zip_images_with_folders(astronaut_jpeg, zip_bytes):
    data = zip_bytes(
        {
            "happy/a.jpg": astronaut_jpeg,
            "top/sad/b.PNG": b"png?",
            "readme.txt": b"hi",
            "happy/.hidden.jpg": b"x",
            "happy/": b"",
        }
    )
    found = {(r.name, r.folder) for r in iter_zip_images(data, "set.zip")}
    assert found == {("set.zip/happy/a.jpg", "happy"), ("set.zip/top/sad/b.PNG", "sad")}


def test_zip_root_images_have_no_folder(astronaut_jpeg, zip_bytes):
    [raw] = iter_zip_images(zip_bytes({"a.jpg": astronaut_jpeg}), "x.zip")
    assert raw.folder is None and raw.read() == astronaut_jpeg


@pytest.mark.parametrize(
    "member", ["../evil.jpg", "happy/../../evil.jpg", "/etc/evil.jpg", "\\evil.jpg", "C:/evil.jpg", ""]
)
def test_zip_escaping_members_refuse_the_whole_archive(astronaut_jpeg, zip_bytes, member):
    data = zip_bytes({"happy/ok.jpg": astronaut_jpeg, member: astronaut_jpeg})
    with pytest.raises(BadInput, match="points outside the archive; refusing the whole archive"):
        open_zip(data, "evil.zip")


def test_zip_symlink_member_is_refused(astronaut_jpeg):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("happy/ok.jpg", astronaut_jpeg)
        link = zipfile.ZipInfo("happy/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(BadInput, match="'happy/link.jpg' is a link"):
        list(iter_zip_images(buf.getvalue(), "links.zip"))


def test_zip_bomb_is_refused(zip_bytes):
    data = zip_bytes({"bomb.jpg": b"\x00" * (20 * 1024 * 1024)}, zipfile.ZIP_DEFLATED)
    assert len(data) < 100_000
    with pytest.raises(BadInput, match="'bomb.jpg' expands [0-9]+x; this looks like a zip bomb"):
        open_zip(data, "bomb.zip")


def test_zip_member_over_the_size_limit(monkeypatch, zip_bytes):
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1000)
    with pytest.raises(BadInput, match="over the per-file limit"):
        open_zip(zip_bytes({"big.jpg": bytes(range(256)) * 8}), "big.zip")


def test_zip_too_many_members_and_too_large_in_total(monkeypatch, zip_bytes):
    monkeypatch.setattr(images, "MAX_ZIP_MEMBERS", 3)
    with pytest.raises(BadInput, match="more than the 3 allowed"):
        open_zip(zip_bytes({f"{i}.jpg": b"x" for i in range(4)}), "many.zip")
    monkeypatch.setattr(images, "MAX_ZIP_MEMBERS", 50_000)
    monkeypatch.setattr(images, "MAX_ZIP_TOTAL_BYTES", 1500)
    with pytest.raises(BadInput, match="would expand to 2,000 bytes"):
        open_zip(zip_bytes({"a.jpg": b"x" * 1000, "b.jpg": b"y" * 1000}), "total.zip")


@pytest.mark.parametrize("data", [b"PK\x03\x04 not really", b"", b"\x00" * 100])
def test_not_a_zip(data):
    with pytest.raises(BadInput, match="bad.zip: not a readable zip archive"):
        open_zip(data, "bad.zip")


# -- files and folders ------------------------------------------------------------------------------
def test_read_file_missing_folder_and_broken_link(tmp_path):
    with pytest.raises(BadInput, match="no such file or folder"):
        read_file(tmp_path / "missing.jpg")
    with pytest.raises(BadInput, match="a folder, not an image file"):
        read_file(tmp_path)
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(BadInput, match="no such file|broken link"):
        read_file(tmp_path / "link.jpg")


def test_read_file_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 10)
    (tmp_path / "big.jpg").write_bytes(b"x" * 11)
    with pytest.raises(BadInput, match="more than the 10-byte limit"):  # read to the limit, not to the end
        read_file(tmp_path / "big.jpg")


def test_folder_images_take_labels_from_their_parent_folder(tmp_path, astronaut_jpeg):
    for rel in ["happy/a.jpg", "sad/deeper/b.jpg", "root.png", "happy/notes.txt", ".git/x.jpg", "sad/.x.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(astronaut_jpeg)
    found = sorted((str(r.name).removeprefix(str(tmp_path) + "/"), r.folder) for r in iter_path_images(tmp_path))
    assert found == [("happy/a.jpg", "happy"), ("root.png", None), ("sad/deeper/b.jpg", "deeper")]


def test_zip_disguised_as_jpg_is_read_as_zip(tmp_path, astronaut_jpeg, zip_bytes):
    (tmp_path / "photos.jpg").write_bytes(zip_bytes({"happy/a.jpg": astronaut_jpeg}))
    [raw] = iter_path_images(tmp_path / "photos.jpg")
    assert raw.folder == "happy" and raw.read() == astronaut_jpeg


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_16_bit_grayscale_images_keep_their_tones(suffix):
    """Review B4: 16-bit grayscale PNG and TIFF decoded as all white (stored as white samples with --cropped)."""
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))  # black to white, left to right
    ok, data = cv2.imencode(suffix, ramp)
    assert ok
    image = decode_image(data.tobytes(), f"scan{suffix}")
    assert image.dtype == np.uint8 and image.shape == (64, 256, 3)
    row = image[32, :, 0].astype(int)
    assert row[0] <= 2 and row[-1] >= 253 and abs(row[128] - 128) <= 2  # the ramp survived
    assert np.all(np.diff(row) >= 0)


def _zip_with_one_photo(astronaut_jpeg: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as zf:
        zf.writestr("happy/a.jpg", astronaut_jpeg)
    return out.getvalue()


def _patched(data: bytes, flags: int | None = None, method: int | None = None) -> bytes:
    """The archive with its member's flag bits and compression method changed in both headers."""
    patched = bytearray(data)
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = patched.index(signature)
        if flags is not None:
            patched[at + flag_at : at + flag_at + 2] = flags.to_bytes(2, "little")
        if method is not None:
            patched[at + flag_at + 2 : at + flag_at + 4] = method.to_bytes(2, "little")
    return bytes(patched)


def _corrupted(data: bytes) -> bytes:
    """The member's compressed bytes overwritten in the middle (its headers intact)."""
    broken = bytearray(data)
    start = broken.index(b"PK\x03\x04") + 30 + len("happy/a.jpg")
    broken[start + 100 : start + 400] = bytes(range(256)) + bytes(44)
    return bytes(broken)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: _patched(d, flags=0x1), "is encrypted"),
        (lambda d: _patched(d, method=99), "compression method 99"),
        (_corrupted, "cannot be read"),
    ],
    ids=["encrypted", "unknown-method", "corrupt-data"],
)
def test_zip_members_that_cannot_be_read_are_refused_with_a_message(astronaut_jpeg, make, message):
    """Review B2: these crashed the import with a traceback, in the CLI and in the browser."""
    data = make(_zip_with_one_photo(astronaut_jpeg))
    with pytest.raises(BadInput, match=message):
        [raw.read() for raw in iter_zip_images(data, "team.zip")]  # read as an import reads: one at a time


def test_an_unreadable_member_is_skipped_by_name_and_the_rest_imported(tmp_path, astronaut_jpeg, run_cli):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("happy/a.jpg", astronaut_jpeg)  # corrupted below
        zf.writestr("happy/b.jpg", astronaut_jpeg)
    archive = tmp_path / "team.zip"
    archive.write_bytes(_corrupted(out.getvalue()))
    done = run_cli("dataset", "import", "--workspace", tmp_path / "ws", "--from-folder", archive, "--cropped")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]  # 1: some inputs failed
    assert (
        "skipped team.zip/happy/a.jpg" in done.stderr.replace(str(tmp_path) + "/", "")
        and "cannot be read" in done.stderr
    )
    assert "added 1 sample(s): {'happy': 1}" in done.stdout


def test_importing_an_archive_holds_one_member_at_a_time(tmp_path, run_cli):
    """Review B5: memory grew with the archive's expanded size (a 3.5 MB zip reached 520 MB RSS)."""
    peaks = {}
    for members in (2, 40):
        archive = tmp_path / f"{members}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            rng = np.random.default_rng(members)
            for i in range(members):  # 1000x1000 BMPs, 3 MB each expanded, about 1/50 of that compressed
                pixels = np.full((1000, 1000, 3), 40 + i, np.uint8)
                pixels[::8] = rng.integers(0, 255, pixels[::8].shape, dtype=np.uint8)  # some noise: no "bomb"
                zf.writestr(f"happy/{i}.bmp", cv2.imencode(".bmp", pixels)[1].tobytes())
        assert archive.stat().st_size < members * 600_000
        code = (
            "import resource, sys; from expr_core.cli import main; code = main(sys.argv[1:]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr); sys.exit(code)"
        )
        ws = tmp_path / f"ws{members}"
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                "dataset",
                "import",
                "--workspace",
                str(ws),
                "--from-folder",
                str(archive),
                "--cropped",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[members] = int(done.stderr.split("PEAK")[-1].split()[0])
    assert peaks[40] - peaks[2] < 20, peaks  # MB; 38 more members expand to 114 MB (before: +169 MB)


def test_special_files_are_refused_at_once(tmp_path):
    """Review B11: a FIFO named x.jpg hung the import; /dev/zero read until memory ran out."""
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(BadInput, match="not a regular file"):
            read_file(path)
