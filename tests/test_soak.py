"""benchmarks/soak.py keeps working: a tiny soak, killed twice (once in a checkpoint write, once while
the run finishes) and resumed, ends equal to its uninterrupted twin with a clean run folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_tiny_soak_kills_resumes_and_matches_the_uninterrupted_run(corpus, tmp_path):
    cmd = [sys.executable, "benchmarks/soak.py", "--steps", "16", "--kills", "2", "--save-interval", "4",
           "--eval-interval", "8", "--data", str(corpus), "--out", str(tmp_path / "soak"), "--parallel"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and figures["ok"], done.stdout[-4000:] + done.stderr[-2000:]
    assert figures["kills"] == 2 and figures["processes"] == 3
    assert any(k.startswith("save") for k in figures["kills_by_moment"]) and "finish" in figures["kills_by_moment"]
    assert figures["weights_equal"] and figures["result_equal"] and figures["rss_flat"]
    assert figures["leftovers"] == [] and figures["final_checkpoints"] == 2
    assert figures["disk_peak_mb"] <= figures["disk_bound_mb"]
