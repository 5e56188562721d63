"""``jgrad demo``'s options are checked while parsing, before anything is computed: each
bad value exits with status 2 and an argparse message naming the flag and the fix."""

import os
import stat

import pytest

import jgrad.experiments
from jgrad import cli


@pytest.fixture
def no_compute(monkeypatch):
    """Makes any computation or file writing fail loudly: a check that runs after the
    demo started is a failed check."""

    def boom(*args, **kwargs):
        raise AssertionError("the demo ran before the options were checked")

    monkeypatch.setattr(jgrad.experiments, "run_demo", boom)
    monkeypatch.setattr(jgrad.experiments, "write_demo", boom)


def _error(capsys, argv):
    """Runs ``jgrad`` with ``argv``; returns the last line of stderr, after checking that
    it exited with status 2 and printed the usage (argparse's format), no traceback."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: jgrad demo") and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--depth", "0", "must be a positive integer, got 0. Pass e.g. --depth 50."),
        (
            "--depth",
            "2.5",
            "must be a positive integer, got '2.5'. Pass e.g. --depth 50.",
        ),
        ("--width", "-3", "must be a positive integer, got -3. Pass e.g. --width 256."),
        ("--batch", "0", "must be a positive integer, got 0. Pass e.g. --batch 64."),
        ("--batch", "many", "must be a positive integer, got 'many'."),
        ("--every", "0", "must be a positive integer, got 0. Pass e.g. --every 5."),
        ("--every", "-1", "must be a positive integer, got -1. Pass e.g. --every 5."),
        ("--seed", "-1", "must be a non-negative integer, got -1. Pass e.g. --seed 0."),
        (
            "--seed",
            str(2**63),
            f"must be at most {2**63 - 1} (2**63 - 1), got {2**63}.",
        ),
    ],
)
def test_bad_numbers_exit_2_naming_the_flag(
    capsys, tmp_path, no_compute, flag, value, expected
):
    line = _error(capsys, ["demo", "--out", str(tmp_path), flag, value])
    assert line.startswith(f"jgrad demo: error: argument {flag}: ")
    assert expected in line


def test_bad_out_exit_2_naming_the_flag(capsys, tmp_path, no_compute):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    fix = "Pass a folder you can write, e.g. --out runs/demo; it is created if missing."
    line = _error(capsys, ["demo", "--out", str(a_file)])
    assert (
        f"argument --out: must be a folder, got '{a_file}', which is an existing file."
        in line
    )
    assert fix in line
    assert a_file.read_text() == "keep me"
    line = _error(capsys, ["demo", "--out", str(a_file / "sub")])
    assert (
        f"argument --out: cannot create folder '{a_file / 'sub'}': '{a_file}' is a file."
        in line
    )
    for empty in ("", "  "):
        line = _error(capsys, ["demo", "--out", empty])
        assert f"argument --out: must be a folder path, got {empty!r}. {fix}" in line


def test_out_without_write_permission(capsys, tmp_path, no_compute, monkeypatch):
    """Checked through os.access, which also runs as root (where chmod restricts nothing)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: p != locked and real_access(p, mode, **kw)
    )
    line = _error(capsys, ["demo", "--out", str(locked / "a" / "b")])
    assert (
        f"argument --out: cannot write to '{locked / 'a' / 'b'}': no write permission"
        in line
    )
    assert not (locked / "a").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder")
def test_out_in_read_only_folder(capsys, tmp_path, no_compute):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        line = _error(capsys, ["demo", "--out", str(locked)])
    finally:
        locked.chmod(stat.S_IRWXU)
    assert "argument --out: cannot write to" in line


@pytest.mark.parametrize("out_first", [True, False])
def test_a_bad_option_leaves_nothing_on_disk(capsys, tmp_path, no_compute, out_first):
    out = tmp_path / "new" / "run"
    argv = ["--out", str(out), "--every", "0"]
    _error(capsys, ["demo", *(argv if out_first else argv[2:] + argv[:2])])
    assert not (tmp_path / "new").exists()


def test_out_that_refuses_a_file_fails_before_the_run(capsys, tmp_path, monkeypatch):
    """os.access can say yes where writing fails (root on a special file system): the
    folder is tried with a real file before the run."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def boom(*args, **kwargs):
        raise AssertionError("the demo ran before --out was tried")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(jgrad.experiments, "run_demo", boom)
    line = _error(capsys, ["demo", "--out", str(tmp_path / "o")])
    assert (
        f"jgrad demo: error: argument --out: cannot write to '{tmp_path / 'o'}': "
        "Permission denied. Pass a folder you can write" in line
    )


def test_help_states_defaults_as_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    # The description names the options, not fixed numbers that ignore them.
    assert "depth-50" not in text and "width-256" not in text
    assert "--depth hidden layers of --width units" in text
    for option, default in [
        ("--out OUT", "(default runs/demo)"),
        ("--seed SEED", ">= 0 (default 0)"),
        ("--depth DEPTH", ">= 1 (default 50)"),
        ("--width WIDTH", ">= 1 (default 256)"),
        ("--batch BATCH", ">= 1 (default 64)"),
        ("--every EVERY", ">= 1 (default 1)"),
    ]:
        assert option in text and default in text, option
    assert "demo.pdf" in text


def test_python_dash_m_jgrad_is_the_command():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "jgrad", "demo", "--every", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "argument --every" in out.stderr and "got 0" in out.stderr
