"""``jgrad sweep``: the files a small sweep writes, and bad flags exiting 2 with the flag
named before anything is computed."""

import json

import numpy as np
import pytest

from jgrad import cli

SMALL = [
    "sweep",
    "--weight-var",
    "0.5",
    "3.0",
    "3",
    "--bias-var",
    "0.0",
    "0.2",
    "2",
    "--depth",
    "6",
    "--width",
    "16",
    "--seeds",
    "2",
    "--n-inputs",
    "3",
    "--quiet",
]


@pytest.mark.slow
def test_sweep_writes_json_npz_and_figures(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli.main([*SMALL, "--activation", "relu", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json",
        "sweep.json",
        "sweep.npz",
        "phase.png",
        "depth_scales.png",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["activation"] == "relu" and config["weight_var"] == [0.5, 3.0, 3]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["grid_points"] == 6 and summary["networks"] == 12
    # ReLU: the critical line is weight_var = 2 at every bias_var
    assert summary["critical_weight_var_predicted"] == [2.0, 2.0]
    assert summary["nonfinite_networks"] == 0
    arrays = np.load(out / "sweep.npz")
    np.testing.assert_allclose(arrays["weight_vars"], [0.5, 1.75, 3.0])
    assert arrays["log10_grad_norm"].shape == (3, 2, 2, 7)
    # chi_1 = weight_var / 2 in theory; 16-wide networks measure it within 25%
    np.testing.assert_allclose(arrays["theory_chi1"][:, 0], [0.25, 0.875, 1.5])
    np.testing.assert_allclose(arrays["chi1"], arrays["theory_chi1"], rtol=0.25)
    assert "6 grid points x 2 seeds" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (
            ["--weight-var", "0", "1", "3"],
            "--weight-var: MIN must be a finite number > 0",
        ),
        (
            ["--weight-var", "1", "0.5", "3"],
            "--weight-var: MAX must be a finite number >=",
        ),
        (["--weight-var", "1", "2", "0"], "--weight-var: N must be a positive integer"),
        (["--weight-var", "a", "2", "3"], "--weight-var: must be MIN MAX N"),
        (
            ["--bias-var", "-0.1", "1", "3"],
            "--bias-var: MIN must be a finite number >= 0",
        ),
        (["--bias-var", "0", "nan", "3"], "--bias-var: MIN must be a finite number"),
        (["--activation", "rleu"], "--activation: invalid choice: 'rleu'"),
        (["--depth", "0"], "--depth: must be a positive integer"),
        (["--seeds", "0"], "--seeds: must be a positive integer"),
        (["--chunk-size", "-2"], "--chunk-size: must be a positive integer"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(flags, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["sweep", *flags, "--out", str(tmp_path / "x")])
    assert err.value.code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_depth_1_is_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["sweep", "--depth", "1", "--out", str(tmp_path / "x")])
    assert err.value.code == 2
    assert "`depth` must be at least 2" in capsys.readouterr().err
