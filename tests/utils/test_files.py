"""Atomic outputs: complete files or none, never a folder replaced, scratch files cleaned up."""

import os

import pytest

from utils.errors import DataError
from utils.files import atomic_path, remove_stale_temporaries, scratch_path


def test_an_atomic_write_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "a_mask.tif"
    with atomic_path(str(target)) as tmp:
        assert not target.exists() and tmp.endswith(".tmp")
        with open(tmp, "w") as handle:
            handle.write("done")
    assert target.read_text() == "done"
    with pytest.raises(RuntimeError), atomic_path(str(tmp_path / "b_mask.tif")) as tmp:
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("stopped")
    assert sorted(os.listdir(tmp_path)) == ["a_mask.tif"]


def test_a_folder_of_the_output_name_is_a_one_line_error(tmp_path):
    (tmp_path / "a_mask.tif").mkdir()
    with pytest.raises(DataError, match="a folder has that name"):
        with atomic_path(str(tmp_path / "a_mask.tif")):
            pass
    assert os.listdir(tmp_path) == ["a_mask.tif"]


def test_stale_temporaries_and_their_scratch_files_are_removed(tmp_path):
    for name in ("a_mask.gpkg.x1.tmp", "a_mask.gpkg.x1.tmp.gpkg", "a_mask.gpkg.x1.tmp.gpkg-journal", "a_mask.gpkg",
                 "notes.txt"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(str(tmp_path), "*_mask.gpkg")
    assert len(removed) == 3 and sorted(os.listdir(tmp_path)) == ["a_mask.gpkg", "notes.txt"]
    with scratch_path(str(tmp_path / "s.tmp.tif")) as scratch:
        open(scratch, "w").close()
    assert not (tmp_path / "s.tmp.tif").exists()
