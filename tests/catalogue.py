"""Harness of the bad-input catalogue (tests/test_bad_inputs.py): one line per case.

A case writes its files into an empty folder, runs the real command line there (in-process through
`lmforge.cli.main`, or as a subprocess to prove the real exit path) and checks what a user would
see: the exit code, one error line naming the file, line, field or option, no traceback, and no
file outside the command's run folder created, changed or removed.

    case("data", "binary-txt", "prepare d.txt --out run", "d.txt", "binary file", files={"d.txt": PNG})

Arguments are split like a shell does; paths are relative to the case's folder. A case that needs
a trained run names it in `runs` ("lm", "clf", "clf3"): a copy of a run trained once per session
is placed in the case's folder under that name, so a command that must not change it is checked
like any other input.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FileData = str | bytes | Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    argv: str
    expect: tuple[str, ...]  # substrings of the error line
    files: dict[str, FileData] = field(default_factory=dict)
    code: int = 2
    subprocess: bool = False
    runs: tuple[str, ...] = ()  # shared trained runs copied into the case folder
    writes: tuple[str, ...] = ()  # folders the command may write (besides the --out folder)
    stdin: str | None = None
    setup: Callable[[Path], None] | None = None
    root_can_read: bool = False  # a permission case: root reads anyway, so it is skipped as root

    @property
    def id(self) -> str:
        return f"{self.category}-{self.name}"


def case(category: str, name: str, argv: str, *expect: str, **kwargs) -> Case:
    return Case(category, name, argv, tuple(expect), **kwargs)


def parametrize(cases: list[Case]):
    ids = [c.id for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids: {duplicates}"
    return pytest.mark.parametrize("bad", cases, ids=ids)


# --- writing inputs ------------------------------------------------------------------------------

WORDS = ("the king and queen walk in the garden while the bells ring over the quiet town and a cat "
         "sleeps by the warm fire as rain falls on old stone roofs").split()
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x06\x00\x00\x00" * 20


def prose(n_docs: int = 60, seed: int = 0) -> str:
    """English-like paragraphs, enough for a tiny character-level run."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        start, n = rng.randrange(len(WORDS)), rng.randrange(8, 30)
        docs.append(" ".join(WORDS[(start + i) % len(WORDS)] for i in range(n)).capitalize() + ".")
    return "\n\n".join(docs) + "\n"


def jsonl(records: list) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def labeled(n: int = 40, labels: tuple = ("pos", "neg"), seed: int = 0) -> list[dict]:
    """Records whose label is learnable from the words."""
    rng = random.Random(seed)
    cues = {lab: f"cue{i}" for i, lab in enumerate(labels)}
    out = []
    for i in range(n):
        lab = labels[i % len(labels)]
        words = rng.sample(WORDS, 6) + [cues[lab]] * 2
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": lab})
    return out


def csv_text(header: list[str], rows: list[list], sep: str = ",") -> str:
    return sep.join(header) + "\n" + "".join(sep.join(str(v) for v in row) + "\n" for row in rows)


def parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def gz(data: str | bytes) -> bytes:
    return gzip.compress(data.encode() if isinstance(data, str) else data)


def write_files(folder: Path, files: dict[str, FileData]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(path)
        elif isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")


# --- shared trained runs -------------------------------------------------------------------------

TINY_LM = ("--tokenizer.kind char --model.n_layer 1 --model.d_model 32 --model.n_head 2 --model.context_len 32 "
           "--train.max_steps 3 --train.global_batch_tokens 256 --eval.interval 3 --eval.max_tokens 256 "
           "--sample.num_samples 0 --runtime.compile off --runtime.precision fp32 --schedule.warmup_steps 1")


class SharedRuns:
    """Runs trained once per session, on first use: 'lm', 'clf' (two classes), 'clf3' (three)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.made: dict[str, Path] = {}

    def get(self, kind: str) -> Path:
        if kind not in self.made:
            self.made[kind] = self._train(kind)
        return self.made[kind]

    def _train(self, kind: str) -> Path:
        from lmforge.cli import main

        run = self.folder / kind
        if kind == "lm":
            data = self.folder / "lm.txt"
            data.write_text(prose(120), encoding="utf-8")
            argv = ["train", str(data), "--out", str(run), *TINY_LM.split()]
        else:
            labels = ("pos", "neg") if kind == "clf" else ("a", "b", "c")
            data = self.folder / f"{kind}.jsonl"
            data.write_text(jsonl(labeled(60, labels)), encoding="utf-8")
            argv = ["classify", "train", "--data", str(data), "--model", "linear", "--out", str(run),
                    "--model.linear.min_df", "1"]
        assert main(argv) == 0, f"could not train the shared {kind} run"
        return run


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> SharedRuns:
    return SharedRuns(tmp_path_factory.mktemp("catalogue_runs"))


# --- running a case ------------------------------------------------------------------------------


def _out_folders(argv: list[str]) -> set[str]:
    """Folders the command writes by design: the value of --out (a run folder or an output file)."""
    return {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "--output")}


def snapshot(folder: Path, skip: set[str]) -> dict[str, tuple[int, str]]:
    """(size, sha256) of every file under `folder` except those under the `skip` paths."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(rel == Path(s) or Path(s) in rel.parents for s in skip) or not path.is_file():
            continue
        data = path.read_bytes()
        out[rel.as_posix()] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert lines, f"no error line in stderr:\n{stderr}"
    return lines[-1]


def _run_subprocess(bad: Case, argv: list[str], folder: Path) -> tuple[int, str, str]:
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", *argv], cwd=folder, env=env, capture_output=True,
                          text=True, input=bad.stdin, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


class ReachedTraining(Exception):
    pass


def _reached_training(*args, **kwargs):
    raise ReachedTraining("the bad input was accepted and training started")


def run_case(bad: Case, folder: Path, capsys, monkeypatch, runs: SharedRuns) -> str:
    """Run one case in `folder` and check it; returns the error line."""
    if bad.root_can_read and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop reading")
    for kind in bad.runs:
        shutil.copytree(runs.get(kind), folder / kind)
    write_files(folder, bad.files)
    if bad.setup is not None:
        bad.setup(folder)
    argv = shlex.split(bad.argv)
    skip = _out_folders(argv) | set(bad.writes)
    before = snapshot(folder, skip)
    monkeypatch.chdir(folder)
    if bad.subprocess:
        code, out, err = _run_subprocess(bad, argv, folder)
    else:
        from lmforge.cli import main

        if bad.stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(bad.stdin))
        # Every case must stop before training: one that slips through fails at once instead of
        # training a model (which would also mean the bad input was accepted).
        monkeypatch.setattr("lmforge.trainer.loop._Fit.__init__", _reached_training)
        capsys.readouterr()
        code = main(argv)  # must return, never raise: a raise here is a traceback for the user
        out, err = capsys.readouterr()
    line = _error_line(err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert code == bad.code, f"exit code {code}, expected {bad.code}; stderr:\n{err}"
    if bad.code == 2 and "usage:" not in err:
        assert line.startswith("lmforge: error: "), line
    for text in bad.expect:
        assert text in line, f"{text!r} not in the error line: {line}"
    assert snapshot(folder, skip) == before, "files outside the run folder were created, changed or removed"
    return line
