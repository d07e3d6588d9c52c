"""Atomic writes: a writer that fails half-way leaves the old file and no temp file behind."""

import pytest

from featsep.io import atomic_target, ensure_writable_dir, write_json_atomic


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "result.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_target(target) as tmp:
            tmp.write_bytes(b'{"a": 2, "half')  # a partial write, then the writer dies
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_successful_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "new" / "dir" / "x.bin"
    with atomic_target(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_results_get_the_users_umask_not_mkstemps_0600(tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_ensure_writable_dir_creates_or_refuses_in_one_line(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b", "out_dir").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match=r"^out_dir .*/f is a file, not a directory; choose another out_dir"):
        ensure_writable_dir(tmp_path / "f", "out_dir")
    with pytest.raises(FileExistsError, match=r"^--out-dir .*/f/g cannot be created: a parent of it is a file"):
        ensure_writable_dir(tmp_path / "f" / "g", "--out-dir")
    assert (tmp_path / "f").read_text() == "x"
