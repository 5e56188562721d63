"""``jgrad train``: files written, resume continues the run, bad flags exit 2 with the
flag named, a resume with other settings refused."""

import json

import jax
import pytest

from jgrad import cli
from jgrad.experiments._train_task import TrainConfig, chance_loss, run_train


@pytest.fixture(autouse=True)
def _standard_promotion():
    """optax's adam is written for JAX's default promotion rules, which users run with."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


ARGS = [
    "--seq-len",
    "10",
    "--hidden",
    "8",
    "--batch",
    "4",
    "--every",
    "2",
    "--quiet",
    "--time-norms-every",
    "4",
]


@pytest.mark.slow
def test_train_writes_its_files_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *ARGS, "--clip-global-norm", "1.0", "--out", str(out)]
    assert cli.main([*args, "--steps", "6", "--checkpoint-every", "2"]) == 0
    assert {"metrics.jsonl", "config.json", "train.png", "checkpoints"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["clip_global_norm"] == 1.0 and config["cell"] == "lstm"
    assert cli.main([*args, "--steps", "10", "--resume"]) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    assert all(0 < r["clip_factor"] <= 1 for r in rows)
    timed = [r["step"] for r in rows if "log10_time_grad_norms" in r]
    assert timed == [4, 8] and len(rows[1]["log10_time_grad_norms"]) == 11  # t = 0..10
    assert "step 10" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        cli.main(["train", *ARGS, "--hidden", "16", "--out", str(out), "--resume"])
    assert err.value.code == 2


@pytest.mark.parametrize(
    ("flag", "value", "match"),
    [
        ("--lr", "0", "--lr: must be a number > 0"),
        ("--clip-global-norm", "-1", "--clip-global-norm: must be a number > 0"),
        ("--task", "addng", "--task: invalid choice"),
        ("--optimizer", "adm", "--optimizer: invalid choice"),
        ("--seq-len", "1", "--seq-len: must be"),
        ("--steps", "0", "--steps: must be a positive integer"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(flag, value, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as err:
        cli.main(["train", flag, value, "--out", str(tmp_path / "x")])
    assert err.value.code == 2
    assert match in capsys.readouterr().err


def test_temporal_order_needs_ten_steps_and_chance_levels(tmp_path):
    with pytest.raises(ValueError, match="`seq_len` must be >= 10"):
        run_train(
            TrainConfig(task="temporal_order", seq_len=5), tmp_path, progress=False
        )
    assert chance_loss(TrainConfig(task="adding")) == pytest.approx(1 / 6)
    assert chance_loss(TrainConfig(task="copy", seq_len=30)) == pytest.approx(
        10 * 2.0794415416798357 / 50
    )


@pytest.mark.slow
def test_classification_tasks_record_accuracy(tmp_path):
    small = dict(seq_len=10, hidden=8, batch=4, steps=2, every=1, checkpoint_every=None)
    for task in ("temporal_order", "copy"):
        res = run_train(
            TrainConfig(task=task, time_norms_every=None, **small),
            tmp_path / task,
            progress=False,
        )
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in res.history)
        assert [r["nonfinite_steps"] for r in res.history] == [0, 0]
