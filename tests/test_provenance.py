"""Every run folder, checkpoint and benchmark table says where it came from."""

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from training import provenance
from training.checkpoint import load_checkpoint, save_best_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_the_record_names_machine_threads_versions_commit_and_command(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(1)
    record = provenance.collect(["launch/train_ppo.py", "--exp-name", "a b"])
    assert record["command"] == "python launch/train_ppo.py --exp-name 'a b'"  # shell-quoted, pasteable
    assert record["cpu"] and record["cpu"] != "unknown" and record["cores"] >= record["usable_cores"] >= 1
    assert record["torch_threads"] == 1 and record["thread_variables"] == {"OMP_NUM_THREADS": "3"}
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("torch", "numpy", "numba", "gymnasium"):
        assert record["packages"][name] == metadata.version(name)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
        assert record["commit"] == head.stdout.strip() and record["dirty"] == bool(status.stdout.strip())
    line = provenance.describe(record)
    assert record["cpu"] in line and "1 torch thread(s)" in line and "OMP_NUM_THREADS=3" in line
    assert f"torch {metadata.version('torch')}" in line and "`python launch/train_ppo.py --exp-name 'a b'`" in line
    assert "1/2 torch thread(s)" in provenance.describe(record, [1, 2])


def test_git_state_outside_a_checkout_is_unknown(tmp_path):
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_records_accumulate_and_travel_in_every_checkpoint(tmp_path):
    first = provenance.record_run(tmp_path, {"command": "start"})
    second = provenance.record_run(tmp_path, {"command": "resume"})
    assert first == [{"command": "start"}] and second == [{"command": "start"}, {"command": "resume"}]
    assert not list(tmp_path.glob(".*.tmp"))
    for path in (save_checkpoint(tmp_path, {"x": torch.ones(1)}, 10), save_best_checkpoint(tmp_path, {"x": torch.ones(1)})):
        assert json.loads(load_checkpoint(path)["provenance"]) == second


def test_a_run_folder_without_records_reads_as_none(tmp_path):
    assert provenance.read_run(tmp_path) == []
    (tmp_path / provenance.PROVENANCE_FILE).write_text("{not json")
    assert provenance.read_run(tmp_path) == []
