"""Atomic result files: a crash mid-write leaves the previous file intact."""

import json
import math

import numpy as np
import pytest

from jgrad.experiments import atomic_write, save_json


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
