"""model/files.py: atomic file and folder writes leave either the old content or the new, never a mix or debris."""

import stat

import pytest

from model.files import atomic_dir, atomic_path, atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_is_utf8_and_creates_the_folder(tmp_path):
    """(The kill-mid-write case of atomic_writer is in test_config_toolkit.py.)"""
    target = tmp_path / "sub" / "out.json"
    assert atomic_write(target, "é\n", fsync=True) == target
    assert target.read_bytes() == "é\n".encode("utf-8")


def test_atomic_path_gives_a_hidden_sibling_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".")
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert _entries(tmp_path) == ["weights.bin"]
    with atomic_path(target, permissions=0o600) as tmp:
        assert target.read_bytes() == b"old"  # readers see the old file until the rename
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    assert _entries(tmp_path) == ["weights.bin"]


def test_atomic_dir_swaps_a_complete_folder_in(tmp_path):
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "stale.safetensors").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_text("new")
        assert _entries(target) == ["stale.safetensors"]  # readers see the old folder until the swap
    assert _entries(target) == ["model.safetensors"]  # nothing of the old folder survives
    assert _mode(target) == 0o755  # not mkdtemp's 0700
    assert _entries(tmp_path) == ["checkpoint"]  # neither the temporary nor the moved-aside folder remains


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "config.json").write_text("half")
            raise ValueError
    assert (target / "config.json").read_text() == "{}"
    assert _entries(tmp_path) == ["model"]


def test_atomic_dir_keep_existing_lets_the_first_writer_win(tmp_path):
    target = tmp_path / "cache" / "key"
    with atomic_dir(target, keep_existing=True) as tmp:
        (tmp / "data").write_text("first")
    with atomic_dir(target, keep_existing=True) as tmp:
        (tmp / "data").write_text("second")
    assert (target / "data").read_text() == "first"
    assert _entries(target.parent) == ["key"]
