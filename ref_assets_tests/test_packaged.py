import hashlib
import os
import shutil
import sys

import pytest

from ref_assets import packaged as packaged_module
from ref_assets.defs.resources import PackagedFilesResource
from ref_assets.packaged import PackagedFileError, PackagedFiles, PackagedRef

CV = "packaged:ref_assets/data/variables_cv.toml"


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package ``ref_fixture_pkg`` with one data file, on a temporary sys.path."""
    root = tmp_path / "site"
    package = root / "ref_fixture_pkg"
    (package / "maps").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "maps" / "colours.txt").write_text("v1\n")
    monkeypatch.syspath_prepend(str(root))
    yield package
    sys.modules.pop("ref_fixture_pkg", None)


def test_first_use_writes_the_cache_and_later_uses_read_it(tmp_path):
    files = PackagedFiles(tmp_path / "cache")
    path = files.path(CV)
    assert path == tmp_path / "cache" / "ref_assets" / "data" / "variables_cv.toml"
    packaged = files.packaged_bytes(PackagedRef.parse(CV))
    assert path.read_bytes() == packaged
    modified = path.stat().st_mtime_ns
    assert files.path(CV) == path
    assert path.stat().st_mtime_ns == modified  # unchanged content is not rewritten


def test_deleted_or_corrupted_cache_is_repaired_on_the_next_read(tmp_path, caplog):
    files = PackagedFiles(tmp_path / "cache")
    packaged = files.packaged_bytes(PackagedRef.parse(CV))
    path = files.path(CV)
    shutil.rmtree(tmp_path / "cache")
    assert files.path(CV).read_bytes() == packaged
    path.write_bytes(packaged[:-10] + b"corrupted!")  # same size, other bytes
    caplog.set_level("INFO", logger="ref_assets.packaged")
    assert hashlib.sha256(files.path(CV).read_bytes()).digest() == hashlib.sha256(packaged).digest()
    assert "was out of date or corrupt; written from the package" in caplog.text
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


def test_cache_follows_a_change_of_the_packaged_file(tmp_path, fake_package):
    files = PackagedFiles(tmp_path / "cache")
    ref = "packaged:ref_fixture_pkg/maps/colours.txt"
    assert files.path(ref).read_text() == "v1\n"
    (fake_package / "maps" / "colours.txt").write_text("v2: upgraded\n")  # a package upgrade
    assert files.path(ref).read_text() == "v2: upgraded\n"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("ref_assets/data/variables_cv.toml", "not of the form"),
        ("packaged:ref_assets/../../etc/passwd", "without '..'"),
        ("packaged:/etc/passwd", "not of the form"),
        ("packaged:ref-assets/data/x.toml", "not of the form"),
        ("packaged:ref_assets/", "not of the form"),
        (
            "packaged:no_such_package_xyz/data.toml",
            "package 'no_such_package_xyz' is not installed",
        ),
        ("packaged:ref_assets/data/absent.toml", "has no file 'data/absent.toml'"),
    ],
)
def test_bad_references_are_clear_errors(tmp_path, reference, message):
    with pytest.raises(PackagedFileError, match=message.replace("(", r"\(")):
        PackagedFiles(tmp_path / "cache").path(reference)
    assert not (tmp_path / "cache").exists()


def test_which_paths_stand_for_packaged_files(tmp_path, fake_package):
    files = PackagedFiles(tmp_path / "cache", known_packages=("ref_assets", "ref_fixture_pkg"))
    cv = PackagedRef.parse(CV)
    own = tmp_path / "ref_assets" / "data" / "variables_cv.toml"  # the operator's own copy
    own.parent.mkdir(parents=True)
    own.write_text("mine")
    assert files.packaged_ref_for(own) is None
    assert files.packaged_ref_for(files.cache_path(cv)) == cv
    gone = tmp_path / "old" / "lib" / "python3.10" / "site-packages" / "ref_assets" / cv.file
    assert files.packaged_ref_for(gone) == cv
    assert files.packaged_ref_for(fake_package / "maps" / "colours.txt") is None  # not in a venv
    installed = tmp_path / "venv" / "site-packages" / "ref_fixture_pkg" / "maps" / "colours.txt"
    installed.parent.mkdir(parents=True)
    installed.write_text("v1\n")
    assert files.packaged_ref_for(installed) == PackagedRef("ref_fixture_pkg", "maps/colours.txt")
    assert files.packaged_ref_for(tmp_path / "gone" / "ref_assets" / "data" / "nope.toml") is None


def test_packaged_files_resource_serves_from_the_configured_cache(settings):
    resource = PackagedFilesResource()
    path = resource.path(CV)
    assert path.is_relative_to(settings.cache_dir)
    vocabulary = resource.variables_cv()
    assert vocabulary.variables["t2m"].units == ["degC", "K"]
    assert vocabulary.sources == (CV,)


def test_a_directory_in_place_of_the_cached_file_is_replaced(tmp_path):
    files = PackagedFiles(tmp_path / "cache")
    in_the_way = files.cache_path(PackagedRef.parse(CV))
    (in_the_way / "junk").mkdir(parents=True)
    assert files.path(CV).read_bytes() == files.packaged_bytes(PackagedRef.parse(CV))


def test_an_unwritable_cache_falls_back_to_the_installed_file(tmp_path, monkeypatch, caplog):
    def read_only(path, data):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(packaged_module, "atomic_write_bytes", read_only)
    path = PackagedFiles(tmp_path / "cache").path(CV)
    assert path.read_bytes() == PackagedFiles(tmp_path).packaged_bytes(PackagedRef.parse(CV))
    assert not path.is_relative_to(tmp_path)
    assert "cannot be written" in caplog.text


def test_new_cache_files_get_the_mode_of_any_new_file_not_0600(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = PackagedFiles(tmp_path / "cache").path(CV)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
