"""Atomic artifact writes and output-directory checks."""

import os

import pytest

from logitguard.io import atomic_directory, atomic_write, ensure_writable_dir, write_json


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_json(tmp_path / "results.json", {"ok": 1})

    def crash(tmp):
        tmp.write_text('{"half": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == '{\n  "ok": 1\n}\n'
    assert os.listdir(tmp_path) == ["results.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="not writable"):
        ensure_writable_dir(locked)


def test_output_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises((NotADirectoryError, PermissionError), match="file"):
        ensure_writable_dir(tmp_path / "file" / "out")


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    assert os.listdir(tmp_path) == ["adapter"]
