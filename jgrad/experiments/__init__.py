"""Experiments: runs behind the ``jgrad`` command, the runner of ``papers_repro/``
(``run_findings``, ``verdict``), and atomic result files."""

from jgrad.experiments._demo import DEMO_NETS as DEMO_NETS
from jgrad.experiments._demo import DemoConfig as DemoConfig
from jgrad.experiments._demo import format_table as format_table
from jgrad.experiments._demo import plot_demo as plot_demo
from jgrad.experiments._demo import run_demo as run_demo
from jgrad.experiments._demo import write_demo as write_demo
from jgrad.experiments._io import atomic_write as atomic_write
from jgrad.experiments._io import provenance as provenance
from jgrad.experiments._io import save_figure as save_figure
from jgrad.experiments._io import save_json as save_json
from jgrad.experiments._runner import Check as Check
from jgrad.experiments._runner import Finding as Finding
from jgrad.experiments._runner import Result as Result
from jgrad.experiments._runner import Verdict as Verdict
from jgrad.experiments._runner import find_findings as find_findings
from jgrad.experiments._runner import format_row as format_row
from jgrad.experiments._runner import run_finding as run_finding
from jgrad.experiments._runner import run_findings as run_findings
from jgrad.experiments._runner import verdict as verdict
from jgrad.experiments._sweep_task import SweepConfig as SweepConfig
from jgrad.experiments._sweep_task import run_sweep as run_sweep
from jgrad.experiments._train_task import TrainConfig as TrainConfig
from jgrad.experiments._train_task import plot_train as plot_train
from jgrad.experiments._train_task import run_train as run_train

__all__ = [
    "Check",
    "Finding",
    "Result",
    "SweepConfig",
    "Verdict",
    "find_findings",
    "format_row",
    "run_finding",
    "run_findings",
    "run_sweep",
    "verdict",
    "DEMO_NETS",
    "DemoConfig",
    "TrainConfig",
    "atomic_write",
    "format_table",
    "plot_demo",
    "plot_train",
    "provenance",
    "run_demo",
    "run_train",
    "save_figure",
    "save_json",
    "write_demo",
]
