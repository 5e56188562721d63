"""Atomic result files: a crash mid-write leaves the previous file intact."""

import json
import math
import os
import stat

import numpy as np
import pytest

from jgrad.experiments import _io, atomic_write, save_json


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    save_json({"a": 1}, path)

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write('{"a": 2, "trunc')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_json_is_strict_and_keeps_non_finite_values(tmp_path):
    path = save_json(
        {
            "x": np.arange(3, dtype=np.float32) / 4,
            "bad": [math.inf, -np.inf, np.nan],
            "flag": np.bool_(True),
            "n": np.int64(7),
        },
        tmp_path / "sub" / "r.json",
    )
    data = json.loads(
        path.read_text()
    )  # json.loads would accept NaN; check the text too
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert data == {
        "x": [0.0, 0.25, 0.5],
        "bad": ["inf", "-inf", "nan"],
        "flag": True,
        "n": 7,
    }


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("proc", [True, False], ids=["proc-status", "os.umask"])
def test_files_get_the_mode_of_a_plain_open(tmp_path, umask, monkeypatch, proc):
    """What ``open(path, "w")`` gives a new file under the umask, not mkstemp's 0o600;
    read from /proc/self/status, or (where that is missing) by setting the umask back."""
    if not proc:
        monkeypatch.setattr(_io, "_PROC_STATUS", str(tmp_path / "no-such-file"))
    elif not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc on this system")
    for mask, mode in [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)]:
        folder = tmp_path / f"umask{mask:03o}"
        folder.mkdir()
        umask(mask)
        with open(folder / "plain.txt", "w") as f:  # the reference
            f.write("x")
        path = save_json({"a": 1}, folder / "r.json")
        assert stat.S_IMODE(os.stat(folder / "plain.txt").st_mode) == mode
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, oct(mask)
        assert os.umask(mask) == mask  # reading the umask leaves it as it was
        # An existing file is replaced atomically and gets the same mode.
        os.chmod(path, 0o640)
        save_json({"a": 2}, path)
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, oct(mask)
        assert json.loads(path.read_text()) == {"a": 2}
        assert sorted(p.name for p in folder.iterdir()) == ["plain.txt", "r.json"]
