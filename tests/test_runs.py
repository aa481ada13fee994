"""Run folders protect their owner: one run per folder, resume that honours or refuses, damaged files
survived, outputs that never overwrite inputs."""

import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lmforge
from classify_synth import sentiment_records, tiny_overrides, write_jsonl
from lmforge import runs
from lmforge.classify.config import ClassifyConfig
from lmforge.classify.run import train_classifier
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import ConfigError, DataError, StorageError, TrainingError
from lmforge.trainer import checkpoint as ckpt
from test_train import small_cfg

FAST = {"train.max_steps": 6, "eval.interval": 3, "train.save_interval": 2, "train.keep_checkpoints": 5,
        "eval.max_tokens": 512}


def train_lm(corpus, out, **over):
    return lmforge.train(small_cfg(corpus, out, **{**FAST, **over}), progress=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_byte(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def cli(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


# --- one owner, one history --------------------------------------------------------------------------


def test_default_runs_get_their_own_folder_and_runs_latest_follows(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = train_lm(corpus, "", **{"train.max_steps": 2, "eval.interval": 2})
    b = train_lm(corpus, "", **{"train.max_steps": 2, "eval.interval": 2})
    assert a.run_dir != b.run_dir and a.run_dir.parent == b.run_dir.parent == Path("runs")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-lm(-\d+)?", b.run_dir.name)
    assert os.readlink("runs/latest") == b.run_dir.name
    ia, ib = (json.loads((r.run_dir / "run.json").read_text()) for r in (a, b))
    assert ia["run_id"] != ib["run_id"] and ia["kind"] == ib["kind"] == "lm" and ib["status"] == "finished"
    assert ib["lmforge_version"] == lmforge.__version__ and ib["created"] and ib["command"]
    meta = ckpt.read_meta(ckpt.latest_checkpoint(b.run_dir))
    assert meta["run_id"] == ib["run_id"] and set(meta["sha256"]) == {"model.safetensors", "state.pt"}
    # two runs starting in the same second still get distinct folders
    names = {runs.claim("", "classify", quiet=True).name for _ in range(3)}
    assert len(names) == 3 and os.readlink("runs/latest-classify") in names


def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(corpus, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "linear").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "config.yaml").write_text("mine: true\n")
    (mine / "linear" / "keep.txt").write_text("mine too")
    before = snapshot(mine)
    rc, err = cli(capsys, "train", "--data", corpus, "--out", mine, "--train.max_steps", "2")
    assert rc == 2 and "not an lmforge run folder" in err and "Traceback" not in err and len(err.splitlines()) == 1
    data = write_jsonl(tmp_path / "train.jsonl", sentiment_records(60))
    rc, err = cli(capsys, "classify", "train", "--data", data, "--out", mine, "--model", "linear")
    assert rc == 2 and "not an lmforge run folder" in err
    rc, err = cli(capsys, "prepare", "--data", corpus, "--out", mine)
    assert rc == 2 and "not an lmforge run folder" in err
    rc, err = cli(capsys, "train", "--data", corpus, "--out", mine, "--overwrite", "--train.max_steps", "2")
    assert rc == 2  # --overwrite replaces runs, never a folder of the user's
    assert snapshot(mine) == before
    (tmp_path / "afile").write_text("x")
    rc, err = cli(capsys, "train", "--data", corpus, "--out", tmp_path / "afile")
    assert rc == 2 and "is a file" in err and (tmp_path / "afile").read_text() == "x"


def test_a_trained_run_needs_resume_or_overwrite_which_removes_only_lmforges_files(corpus, tmp_path):
    run = tmp_path / "run"
    first = train_lm(corpus, run)
    (run / "notes.txt").write_text("mine")
    (run / "analysis").mkdir()
    (run / "analysis" / "plot.py").write_text("print(1)")
    old_id = json.loads((run / "run.json").read_text())["run_id"]
    with pytest.raises(ConfigError, match="already holds an lmforge lm run.*--resume.*--overwrite"):
        train_lm(corpus, run, **{"train.max_steps": 4})
    assert first.steps == 6 and ckpt.read_meta(ckpt.latest_checkpoint(run))["step"] == 6
    cfg = small_cfg(corpus, run, **{**FAST, "train.max_steps": 4})
    lmforge.train(cfg, progress=False, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine" and (run / "analysis" / "plot.py").is_file()
    # the earlier run's later checkpoints are gone: a resume can only ever see the new run's
    assert [ckpt.read_meta(c)["step"] for c in ckpt.list_checkpoints(run)] == [2, 4]
    info = json.loads((run / "run.json").read_text())
    assert info["run_id"] != old_id and info["status"] == "finished"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4 and steps == sorted(steps)  # no lines of the earlier run


def test_a_prepared_or_planned_folder_is_taken_over_by_the_run(corpus, tmp_path):
    run = tmp_path / "run"
    cfg = small_cfg(corpus, run, **FAST)
    assert not lmforge.prepare(cfg).reused
    result = lmforge.train(small_cfg(corpus, run, **FAST), progress=False)
    assert result.steps == 6
    with pytest.raises(ConfigError, match="already holds"):
        lmforge.prepare(small_cfg(corpus, run, **FAST))  # would replace a trained run's tokenizer


def test_tune_refuses_a_folder_that_is_not_a_study(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an lmforge tune study"):
        runs.claim_study(tmp_path / "s")
    assert runs.claim_study(tmp_path / "t") == runs.claim_study(tmp_path / "t")  # a study resumes in its folder


# --- resume honours or refuses -----------------------------------------------------------------------


def test_resume_refuses_changed_model_shape_and_data(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train_lm(corpus, run, **{"train.max_steps": 4})
    before = snapshot(run)
    rc, err = cli(capsys, "train", "--resume", run, "--model.n_layer", "3", "--train.max_steps", "8")
    assert rc == 2 and "model.n_layer: the run has 2, now 3" in err and "--out NEW_FOLDER" in err
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text())
    rc, err = cli(capsys, "train", "--resume", run, "--data", other, "--train.max_steps", "8")
    assert rc == 2 and "data.path" in err
    rc, err = cli(capsys, "train", "--resume", run, "--overwrite")
    assert rc == 2 and "--overwrite" in err
    assert snapshot(run) == before


def test_resume_with_more_steps_continues_to_the_uninterrupted_weights(corpus, tmp_path, capsys):
    over = {"schedule.kind": "constant", "schedule.warmup_steps": 2, "eval.interval": 3, "train.save_interval": 3}
    train_lm(corpus, tmp_path / "ref", **over, **{"train.max_steps": 12})
    run = tmp_path / "run"
    train_lm(corpus, run, **over, **{"train.max_steps": 6})
    rc, err = cli(capsys, "train", "--resume", run, "--train.max_steps", "12", "--optim.lr", "3e-3")
    assert rc == 0 and "train.max_steps 6 -> 12" in err
    a = load_file(str(ckpt.latest_checkpoint(tmp_path / "ref") / "model.safetensors"))
    b = load_file(str(ckpt.latest_checkpoint(run) / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    info = json.loads((run / "run.json").read_text())
    assert info["resume_history"][-1]["changed"] == {"train.max_steps": [6, 12]}
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 12
    assert json.loads((run / "result.json").read_text())["steps"] == 12


def test_resuming_a_finished_run_changes_nothing(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    done = train_lm(corpus, run)
    before = snapshot(run)
    rc, err = cli(capsys, "train", "--resume", run)
    assert rc == 0 and "already finished" in err
    again = lmforge.train(resume=run, progress=False)
    assert again.steps == done.steps and again.val_loss == pytest.approx(done.val_loss)
    assert snapshot(run) == before  # result.json, run.json, metrics: the same bytes
    # killed after its final checkpoint, before result.json: resuming finishes it with real figures
    (run / "result.json").unlink()
    runs.update_info(run, status="training")
    finished = lmforge.train(resume=run, progress=False)
    saved = json.loads((run / "result.json").read_text())
    assert finished.steps == saved["steps"] == 6 and saved["val_loss"] == pytest.approx(done.val_loss)


def test_resuming_a_run_killed_while_writing_its_report_writes_the_report(corpus, tmp_path, capsys):
    # The report is written after run.json says finished: a kill in between left a run without one.
    run = tmp_path / "run"
    train_lm(corpus, run)
    for name in ("report.html", "report.md"):
        (run / name).unlink()
    before = snapshot(run)
    rc, err = cli(capsys, "train", "--resume", run)
    assert rc == 0 and "already finished" in err
    after = snapshot(run)
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    assert {k: v for k, v in after.items() if not k.startswith("report")} == \
        {k: v for k, v in before.items() if not k.startswith("report")}


def test_resume_against_changed_data_is_refused_unless_asked(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train_lm(corpus, run, **{"train.max_steps": 4})
    with corpus.open("a") as f:
        f.write("\n\nA new paragraph that was not there before.\n")
    rc, err = cli(capsys, "train", "--resume", run, "--train.max_steps", "6")
    assert rc == 2 and f"{corpus.resolve()} changed" in err and "--use-prepared-data" in err
    tokens = (run / "data" / "train.bin").read_bytes()
    rc, err = cli(capsys, "train", "--resume", run, "--train.max_steps", "6", "--use-prepared-data")
    assert rc == 0
    assert (run / "data" / "train.bin").read_bytes() == tokens  # never re-tokenized
    assert "input data changed" in json.loads((run / "run.json").read_text())["resume_history"][-1]["note"]


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0_to_the_same_weights(corpus, tmp_path,
                                                                                             monkeypatch, capsys):
    # Found by benchmarks/soak.py: a kill in start-up or the first steps left a run --resume refused.
    over = {"train.max_steps": 8, "train.save_interval": 4, "eval.interval": 4}
    train_lm(corpus, tmp_path / "ref", **over)
    run = tmp_path / "run"
    from lmforge.lm.task import LMTask

    original = LMTask.micro_batch

    def stopped_at_step_3(self, step, *args):
        if step == 3:
            raise KeyboardInterrupt  # the folder as a kill during step 3 leaves it
        return original(self, step, *args)

    monkeypatch.setattr(LMTask, "micro_batch", stopped_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_lm(corpus, run, **over)
    monkeypatch.setattr(LMTask, "micro_batch", original)
    assert not ckpt.list_checkpoints(run) and (run / "metrics.jsonl").read_text().count("\n") == 3
    # what kills in the middle of crash-safe writes leave (found by the soak), and a file of the user's
    stray = [run / ".run.json.ab12cd_4", run / ".model.json.q1w2e3r4", run / "data" / ".train.bin.0123abcd.tmp",
             run / "loss.tmp.png"]
    for p in stray + [run / ".notes.ab12cd34"]:
        p.write_text("partial")

    rc, err = cli(capsys, "train", "--resume", run)
    assert rc == 0, err
    assert not any(p.exists() for p in stray) and (run / ".notes.ab12cd34").read_text() == "partial"
    for name in ("checkpoints/step_0000008/model.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "ref" / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # the lost attempt's lines are gone, none doubled
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and "from step 0" in info["resume_history"][-1]["note"]


# --- damaged files are survived ----------------------------------------------------------------------


def test_damaged_newest_checkpoint_falls_back_to_the_intact_one(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train_lm(corpus, run)
    final = load_file(str(ckpt.latest_checkpoint(run) / "model.safetensors"))
    flip_byte(ckpt.latest_checkpoint(run) / "model.safetensors")
    capsys.readouterr()
    result = lmforge.train(resume=run, progress=False)  # its final checkpoint is damaged: redo from step 4
    err = capsys.readouterr().err
    assert "step_0000006 is damaged" in err and result.steps == 6
    again = load_file(str(ckpt.latest_checkpoint(run) / "model.safetensors"))
    for k in final:  # the same steps again (exact up to the thread count's summation order)
        torch.testing.assert_close(final[k], again[k], atol=1e-6, rtol=1e-5)

    with open(ckpt.latest_checkpoint(run) / "state.pt", "r+b") as f:
        f.truncate(100)
    flip_byte(run / "model.safetensors")
    from lmforge.lm.model import load_run_model

    _, _, info = load_run_model(run)
    err = capsys.readouterr().err
    assert info["weights"].endswith("step_0000004/model.safetensors")
    assert "model.safetensors is damaged" in err and "step_0000006 is damaged" in err
    assert lmforge.evaluate(run, max_tokens=512)["val_loss"] > 0
    gen = main(["generate", str(run), "--prompt", "The king", "--max-new-tokens", "5"])
    assert gen == 0 and capsys.readouterr().out.startswith("The king")


def test_a_checkpoint_copied_from_another_run_is_refused(corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_lm(corpus, a, **{"train.max_steps": 4})
    train_lm(corpus, b, **{"train.max_steps": 6})
    shutil.copytree(b / "checkpoints" / "step_0000006", a / "checkpoints" / "step_0000006")
    cfg = small_cfg(corpus, a, **{**FAST, "train.max_steps": 8})
    with pytest.raises(TrainingError, match="step_0000006 was written by another run"):
        lmforge.train(cfg, resume=a, progress=False)


def test_full_disk_while_saving_is_one_line_and_the_previous_checkpoint_stays(corpus, tmp_path, capsys,
                                                                             monkeypatch):
    run = tmp_path / "run"
    real_save, calls = torch.save, {"n": 0}

    def full_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint, as PyTorch reports a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0 basic_ios::clear")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    args = ["train", "--data", corpus, "--out", run, "--model.n_layer", "1", "--model.d_model", "32",
            "--model.n_head", "2", "--model.context_len", "32", "--tokenizer.kind", "char", "--train.max_steps", "6",
            "--train.global_batch_tokens", "256", "--train.save_interval", "2", "--eval.interval", "3",
            "--runtime.precision", "fp32", "--runtime.compile", "off", "--sample.num_samples", "0"]
    rc, err = cli(capsys, *args)
    assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("lmforge: error: ")
    err = err.strip().splitlines()[-1]
    assert "step_0000004" in err and "the disk is full" in err and "step_0000002 is intact" in err
    assert not list((run / "checkpoints").glob(".tmp_step_*"))
    monkeypatch.undo()

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.SafetensorsWriter, "write", enospc)  # the weights write fails the same way
    with pytest.raises(StorageError, match="cannot write .*: the disk is full; the previous checkpoint .*step_0000002"):
        lmforge.train(resume=run, progress=False)
    monkeypatch.undo()
    assert lmforge.train(resume=run, progress=False).steps == 6  # resumed from the intact step 2


def test_read_only_out_folder_is_one_line_naming_the_path(corpus, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes through 0o555: make the file system say read-only instead
        def read_only(path, *a, **k):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

        monkeypatch.setattr(runs, "atomic_write_json", read_only)
    try:
        rc, err = cli(capsys, "train", "--data", corpus, "--out", ro, "--train.max_steps", "2")
    finally:
        ro.chmod(0o755)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"cannot write {ro / 'run.json'}" in err and ("read-only" in err or "permission denied" in err)


def test_files_and_folders_honour_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        ckpt.save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(3)}, {"step": torch.tensor(1)}, {}, keep=2)
        ckpt.save_weights({"w": torch.ones(3)}, tmp_path / "run" / "model.safetensors")
    finally:
        os.umask(old)
    c = tmp_path / "run" / "checkpoints" / "step_0000001"
    assert stat.S_IMODE(c.stat().st_mode) == 0o775
    for f in ("model.safetensors", "state.pt", "meta.json"):
        assert stat.S_IMODE((c / f).stat().st_mode) == 0o664, f
    assert stat.S_IMODE((tmp_path / "run" / "model.safetensors").stat().st_mode) == 0o664


# --- classifier runs and outputs ---------------------------------------------------------------------


@pytest.fixture
def clf_run(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [dict(r, id=f"doc-{i}") for i, r in
                                                  enumerate(sentiment_records(120, seed=3))])
    over = tiny_overrides(tmp_path / "clf", **{"model.kind": "fasttext", "train.epochs": 2})
    train_classifier(load_config(None, {"data.path": str(data), **over}, cls=ClassifyConfig), progress=False)
    return tmp_path / "clf", data


def test_classifier_runs_resume_finished_unchanged_and_refuse_a_new_model(clf_run, tmp_path, capsys):
    run, data = clf_run
    before = snapshot(run)
    rc, err = cli(capsys, "classify", "train", "--resume", run)
    assert rc == 0 and "already finished" in err and snapshot(run) == before
    rc, err = cli(capsys, "classify", "train", "--resume", run, "--model", "linear")
    assert rc == 2 and "model.kind: the run has 'fasttext', now 'linear'" in err
    (run / "notes.txt").write_text("mine")
    rc, err = cli(capsys, "classify", "train", "--data", data, "--out", run, "--model", "linear")
    assert rc == 2 and "already holds an lmforge classify run" in err
    rc, err = cli(capsys, "classify", "train", "--data", data, "--out", run, "--model", "linear", "--overwrite")
    assert rc == 0 and (run / "notes.txt").read_text() == "mine"
    assert not (run / "fasttext").exists() and (run / "linear" / "linear.json").is_file()


@pytest.mark.slow
def test_a_classifier_stopped_before_its_first_checkpoint_resumes_without_the_lost_attempts_log(tmp_path,
                                                                                                  monkeypatch, capsys):
    # Found by benchmarks/soak.py --classify: the restarted member appended its log to the lost attempt's.
    data = write_jsonl(tmp_path / "train.jsonl", sentiment_records(120, seed=3))

    def config(out):
        over = tiny_overrides(out, **{"model.kind": "fasttext", "train.epochs": 0, "train.max_steps": 8,
                                      "train.save_interval": 4, "train.log_interval": 1, "eval.interval": 4})
        return load_config(None, {"data.path": str(data), **over}, cls=ClassifyConfig)

    train_classifier(config(tmp_path / "ref"), progress=False)
    from lmforge.classify.task import ClassifyTask

    original = ClassifyTask.micro_batch

    def stopped_at_step_3(self, step, *args):
        if step == 3:
            raise KeyboardInterrupt  # the folder as a kill during step 3 leaves it
        return original(self, step, *args)

    monkeypatch.setattr(ClassifyTask, "micro_batch", stopped_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(config(tmp_path / "run"), progress=False)
    monkeypatch.setattr(ClassifyTask, "micro_batch", original)
    member = tmp_path / "run" / "fasttext"
    assert not ckpt.list_checkpoints(member) and (member / "metrics.jsonl").read_text().count("\n") == 3
    stray = [member / ".metrics.jsonl.q1w2e3r4", tmp_path / "run" / ".run.json.ab12cd34"]
    for p in stray:
        p.write_text("partial")

    rc, err = cli(capsys, "classify", "train", "--resume", tmp_path / "run")
    assert rc == 0, err
    assert not any(p.exists() for p in stray)
    steps = [json.loads(line)["step"] for line in (member / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    name = "checkpoints/step_0000008/model.safetensors"
    a, b = load_file(str(tmp_path / "ref" / "fasttext" / name)), load_file(str(member / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_predict_never_overwrites_its_input_and_keeps_ids(clf_run, tmp_path, capsys):
    run, data = clf_run
    original = data.read_bytes()
    rc, err = cli(capsys, "classify", "predict", run, "--input", data, "--output", data)
    assert rc == 2 and "is also an input" in err and data.read_bytes() == original
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    rc, err = cli(capsys, "classify", "predict", run, "--input", data, "--output", link, "--overwrite")
    assert rc == 2 and data.read_bytes() == original  # the same file by another name, even with --overwrite

    out = tmp_path / "pred.jsonl"
    assert cli(capsys, "classify", "predict", run, "--input", data, "--output", out, "--keep-text")[0] == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = [json.loads(line) for line in original.decode().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert [r["text"] for r in rows] == [r["text"] for r in records]
    rc, err = cli(capsys, "classify", "predict", run, "--input", data, "--output", out)
    assert rc == 2 and "--overwrite" in err
    assert cli(capsys, "classify", "predict", run, "--input", data, "--output", out, "--overwrite")[0] == 0
    assert "text" not in json.loads(out.read_text().splitlines()[0])

    plain = write_jsonl(tmp_path / "plain.jsonl", [{"text": r["text"]} for r in records[:5]])
    assert cli(capsys, "classify", "predict", run, "--input", plain, "--output", tmp_path / "p.csv")[0] == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].startswith("row,label,") and [ln.split(",")[0] for ln in lines[1:]] == ["1", "2", "3", "4", "5"]
    rc, err = cli(capsys, "classify", "predict", run, "--input", plain, "--id-field", "doc")
    assert rc == 2 and "plain.jsonl:1: no field 'doc'" in err


def test_other_user_named_outputs_are_protected_too(clf_run, tmp_path, capsys):
    run, data = clf_run
    original = data.read_bytes()
    rc, err = cli(capsys, "classify", "vectors", "--data", data, "--out", data, "--dim", "8")
    assert rc == 2 and "is also an input" in err and data.read_bytes() == original
    png = tmp_path / "mine.png"
    png.write_bytes(b"not lmforge's")
    rc, err = cli(capsys, "classify", "eval", run, "--data", data, "--confusion-png", png)
    assert rc == 2 and png.read_bytes() == b"not lmforge's"
    assert cli(capsys, "classify", "eval", run, "--data", data, "--confusion-png", png, "--overwrite")[0] == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(DataError, match="holds an lmforge classify run, not a language model"):
        lmforge.evaluate(run)
