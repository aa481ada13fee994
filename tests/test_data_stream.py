"""Streaming prepare: bounded memory, resume after kill, same output for any worker count, near-duplicate
removal, quality filters, decontamination."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import CleanConfig, Config, FilterConfig
from lmforge.data import pipeline, synthetic
from lmforge.data.decontam import overlap
from lmforge.data.prepare import prepare
from lmforge.data.quality import reject_reason
from lmforge.data.readers import read_documents
from lmforge.data.tokens import TokenFile

REPO = Path(__file__).resolve().parents[1]


def _cfg(path: Path, out: Path, **fields) -> Config:
    cfg = Config()
    cfg.data.path, cfg.out = str(path), str(out)
    cfg.tokenizer.kind = "char"
    cfg.data.shard_mb = 0.05
    for name, value in fields.items():
        section, field = name.split("__")
        setattr(getattr(cfg, section), field, value)
    return cfg


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / "data" / name).read_bytes()
            for name in ("train.bin", "val.bin", "tokenizer.json", "train.json", "val.json")}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[list[int]]]:
    folder = tmp_path_factory.mktemp("synthetic")
    synthetic.write_corpus(folder, total_mb=0.4, file_mb=0.15, dup_fraction=0.15, seed=3)
    return folder / "text", synthetic.load_planted(folder)


@pytest.mark.slow
def test_workers_give_identical_output(planted, tmp_path: Path) -> None:
    path, _ = planted
    fields = {"clean__near_dedup": True, "filter__min_words": 90, "data__val_fraction": 0.2}
    one = prepare(_cfg(path, tmp_path / "one", data__num_workers=1, **fields), quiet=True)
    two = prepare(_cfg(path, tmp_path / "two", data__num_workers=2, **fields), quiet=True)
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "two")
    # The run did remove something by each means, so identical output is not identical emptiness.
    cleaning = one.summary["cleaning"]
    assert cleaning["removed_near_duplicate"] > 0 and cleaning["removed_by_filter"]["min_words"] > 0
    assert one.val.num_tokens > 0 and two.train.num_tokens == one.train.num_tokens
    assert not (tmp_path / "one" / "data" / pipeline.WORK_DIR).exists()  # intermediate shards are removed


def test_output_matches_in_memory_prepare(corpus: Path, tmp_path: Path) -> None:
    """The streaming path writes exactly what cleaning, splitting and encoding the whole list would."""
    from lmforge.data.clean import clean_documents, split_documents
    from lmforge.data.tokenizer import train_tokenizer
    from lmforge.data.tokens import encode_corpus

    cfg = _cfg(corpus, tmp_path / "run", data__num_workers=1)
    got = prepare(cfg, quiet=True)
    docs, _ = clean_documents([d.text for d in read_documents(corpus)], cfg.clean)
    train, val = split_documents(docs, cfg.data.val_fraction, cfg.seed)
    tok = train_tokenizer(train, cfg.tokenizer)
    want_train = encode_corpus(train, tok, tmp_path / "ref" / "train.bin", num_workers=1)
    want_val = encode_corpus(val, tok, tmp_path / "ref" / "val.bin", num_workers=1)
    assert got.tokenizer.fingerprint() == tok.fingerprint()
    assert np.array_equal(got.train.tokens, want_train.tokens) and np.array_equal(got.val.tokens, want_val.tokens)
    assert got.train.num_documents == want_train.num_documents


def test_near_dedup_finds_planted_pairs_and_keeps_distinct(planted, tmp_path: Path) -> None:
    path, pairs = planted
    clean = CleanConfig(near_dedup=True)
    work = tmp_path / "work"
    work.mkdir()
    with pipeline.Runner(1, {"clean": clean, "filter": FilterConfig()}) as runner:
        n = pipeline._clean_role(work, "train", lambda: (d.text for d in read_documents(path)), 100_000, runner)
    keep, info = pipeline._dedup_role(work, "train", n, clean)
    duplicate = np.zeros(len(keep), dtype=bool)
    duplicate[[d for d, _ in pairs]] = True
    assert duplicate.sum() >= 20
    recall = (~keep[duplicate]).mean()
    false_positives = int((~keep[~duplicate]).sum())
    assert recall >= 0.9 and false_positives == 0, (recall, false_positives)
    assert len(info["examples"]) == 2 and all(e["similarity"] >= 0.75 for e in info["examples"])


def test_near_dedup_chinese_character_shingles(tmp_path: Path) -> None:
    poem = "床前明月光疑是地上霜举头望明月低头思故乡" * 3 + "白日依山尽黄河入海流欲穷千里目更上一层楼"
    near = poem.replace("举头", "抬头")
    other = "春眠不觉晓处处闻啼鸟夜来风雨声花落知多少" * 3 + "红豆生南国春来发几枝愿君多采撷此物最相思"
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n\n".join([poem, other, near]) + "\n", encoding="utf-8")
    clean = CleanConfig(near_dedup=True)
    work = tmp_path / "work"
    work.mkdir()
    with pipeline.Runner(1, {"clean": clean, "filter": FilterConfig()}) as runner:
        n = pipeline._clean_role(work, "train", lambda: (d.text for d in read_documents(corpus)), 10**6, runner)
    keep, _ = pipeline._dedup_role(work, "train", n, clean)
    assert keep.tolist() == [True, True, False]


PROSE = ("The committee met on Tuesday to discuss the budget for the coming year. Several members argued that "
         "the library needed new computers, while others wanted to repair the roof first. After a long debate, "
         "they agreed to split the money between both projects and to review the decision in the spring.")
CHINESE = ("今天早上我们去了公园散步。天气很好，阳光明媚，很多人在湖边跑步。"
           "中午我们在一家小饭馆吃了面条，然后回家休息。晚上大家一起看了一部电影，觉得非常有意思。")
GOPHER = FilterConfig(min_words=20, max_words=100000, min_mean_word_chars=3, max_mean_word_chars=10,
                      max_symbol_word_ratio=0.1, min_alpha_word_fraction=0.8, max_bullet_line_fraction=0.9,
                      max_ellipsis_line_fraction=0.3, min_punct_line_fraction=0.12, max_short_line_fraction=0.67,
                      max_dup_line_fraction=0.3, max_dup_ngram_char_fraction=0.15, max_top_bigram_char_fraction=0.2)


@pytest.mark.parametrize("text,reason", [
    ("Too short to keep.", "min_words"),
    ("a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f.", "min_mean_word_chars"),
    ("#tag " * 30 + PROSE, "max_symbol_word_ratio"),
    ("1234 5678 9012 3456 " * 10 + "words here.", "min_alpha_word_fraction"),
    ("\n".join(f"- item number {i} in this long list of many things" for i in range(30)), "max_bullet_line_fraction"),
    ("\n".join(f"This line number {i} trails off into nothing at all..." for i in range(30)),
     "max_ellipsis_line_fraction"),
    ("\n".join(f"menu entry {i} home about contact shop login" for i in range(30)), "min_punct_line_fraction"),
    ("\n".join(["Click here to subscribe now."] * 10 + [PROSE]), "max_dup_line_fraction"),
    ("buy now " * 30 + PROSE, "max_top_bigram_char_fraction"),
])
def test_quality_filters_reject_crafted_documents(text: str, reason: str) -> None:
    only = FilterConfig(**{reason: getattr(GOPHER, reason)})
    assert reject_reason(text, only) == reason
    assert reject_reason(PROSE, only) is None and reject_reason(CHINESE, only) is None
    assert reject_reason(text, GOPHER) is not None
    assert reject_reason(text, FilterConfig()) is None  # every filter is off by default


def test_quality_filters_keep_good_english_and_chinese() -> None:
    assert reject_reason(PROSE, GOPHER) is None
    assert reject_reason(CHINESE, GOPHER) is None  # CJK: one word per character, mean word length skipped


def test_language_filter() -> None:
    cfg = FilterConfig(languages="en,zh")
    assert reject_reason(PROSE, cfg) is None and reject_reason(CHINESE, cfg) is None
    german = "Der Ausschuss traf sich am Dienstag, um über den Haushalt für das kommende Jahr zu sprechen."
    assert reject_reason(german, cfg) == "languages"


def test_decontamination_reports_and_removes_leaked_validation_text(tmp_path: Path) -> None:
    leaked = PROSE
    train = [f"Document {i} talks about the weather and rivers and trees number {i} in a calm voice." for i in
             range(40)] + ["Intro. " + leaked + " Outro."]
    valid = ["A fresh sentence that nobody wrote into the training part of this small corpus at all, truly.",
             "Some notes. " + leaked[:200]]
    result = overlap(iter(train), iter(valid), 13, sum(map(len, valid)))
    assert result["contaminated"] == [1] and result["examples"][0]["shared"]
    (tmp_path / "train.txt").write_text("\n\n".join(train), encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n\n".join(valid), encoding="utf-8")
    cfg = _cfg(tmp_path / "train.txt", tmp_path / "run", data__num_workers=1, clean__decontam_ngram=13,
               clean__decontam_remove=True)
    cfg.data.valid_path = str(tmp_path / "valid.txt")
    got = prepare(cfg, quiet=True)
    assert got.summary["decontamination"]["contaminated_documents"] == 1 and got.val.num_documents == 1


RUN_PREPARE = textwrap.dedent("""
    import json, os, resource, sys
    from lmforge.config import Config
    from lmforge.data import readers
    from lmforge.data.prepare import prepare
    if __name__ == "__main__":
        for name in ("STREAM_MIN_BYTES", "STREAM_BLOCK_BYTES"):  # small, so that a small test file is "huge"
            setattr(readers, name, int(os.environ.get(name, getattr(readers, name))))
        cfg = Config()
        cfg.data.path, cfg.out = sys.argv[1], sys.argv[2]
        cfg.tokenizer.kind, cfg.tokenizer.train_sample_mb = "char", 1
        cfg.data.num_workers, cfg.data.shard_mb = int(sys.argv[3]), float(sys.argv[4])
        cfg.clean.near_dedup = sys.argv[5] == "1"
        cfg.clean.decontam_ngram = int(sys.argv[6])
        cfg.data.engine = os.environ.get("LMFORGE_TEST_ENGINE", "local")
        prepare(cfg, quiet=True)
        print(json.dumps({"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def _prepare_process(tmp_path: Path, data: Path, out: Path, workers: int, shard_mb: float, near: bool,
                     decontam_ngram: int = 0, env: dict | None = None):
    script = tmp_path / "run_prepare.py"
    script.write_text(RUN_PREPARE, encoding="utf-8")
    return subprocess.Popen([sys.executable, str(script), str(data), str(out), str(workers), str(shard_mb),
                             "1" if near else "0", str(decontam_ngram)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=os.environ | {"PYTHONPATH": str(REPO)} | (env or {}), start_new_session=True)


def _big_corpus(folder: Path, megabytes: int) -> Path:
    """Many distinct paragraphs, quickly: generated sentences made unique by their number."""
    base = [text for text, _ in synthetic.documents(400, dup_fraction=0.0, seed=1)]
    folder.mkdir(parents=True)
    written, index, file_no = 0, 0, 0
    while written < megabytes * 1_000_000:
        chunk = []
        for _ in range(len(base)):
            chunk.append(f"Record {index}. {base[index % len(base)]}")
            index += 1
        data = "\n\n".join(chunk) + "\n\n"
        (folder / f"part-{file_no:04d}.txt").write_text(data, encoding="utf-8")
        written += len(data)
        file_no += 1
    return folder


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_corpus(tmp_path: Path) -> None:
    limit_mb = 4
    small, big = _big_corpus(tmp_path / "small", 1), _big_corpus(tmp_path / "big", 4 * limit_mb)
    peaks = []
    for data in (small, big):
        # Decontamination off: its index grows with the validation text up to its own cap (about 40 MB).
        proc = _prepare_process(tmp_path, data, tmp_path / f"out-{data.name}", 1, 1.0, False, 0)
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        peaks.append(json.loads(stdout.strip().splitlines()[-1])["peak_rss_kb"] / 1024)
    assert TokenFile(tmp_path / "out-big" / "data" / "train.bin").num_bytes_utf8 > 3 * limit_mb * 1_000_000
    # Holding the corpus would add well over 15 MB (Python strings of 15 MB of extra text).
    assert peaks[1] - peaks[0] < limit_mb, peaks


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_one_huge_file(tmp_path: Path) -> None:
    """A corpus that is a single file is streamed too: read in blocks, cut at paragraph breaks."""
    limit_mb = 4
    peaks, files = [], []
    for name, megabytes in (("small", 1), ("big", 6 * limit_mb)):
        parts = sorted(_big_corpus(tmp_path / name, megabytes).glob("part-*.txt"))
        single = tmp_path / f"{name}.txt"
        with single.open("wb") as f:
            for part in parts:
                f.write(part.read_bytes())
        files.append(single)
        env = {"STREAM_MIN_BYTES": str(256 << 10), "STREAM_BLOCK_BYTES": str(256 << 10)}
        proc = _prepare_process(tmp_path, single, tmp_path / f"one-{name}", 1, 1.0, False, 0, env)
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        peaks.append(json.loads(stdout.strip().splitlines()[-1])["peak_rss_kb"] / 1024)
    assert files[1].stat().st_size > 6 * limit_mb * 1_000_000
    assert TokenFile(tmp_path / "one-big" / "data" / "train.bin").num_bytes_utf8 > 3 * limit_mb * 1_000_000
    # Reading the file whole adds about 25 MB here (its bytes and the decoded string, measured).
    assert peaks[1] - peaks[0] < limit_mb, peaks


def _kill_after_four_shards(proc, out: Path) -> Path:
    """SIGKILL a running prepare and its workers at once (as a crash would) once four shards are cleaned (or
    it ended); its work folder. Killing the parent alone let a worker finish one more shard now and then."""
    work = out / "data" / pipeline.WORK_DIR
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("train-*.done"))) < 4 and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return work


@pytest.mark.slow
def test_datatrove_engine_resumes_and_gives_the_local_engines_output(planted, tmp_path: Path) -> None:
    """A datatrove prepare killed while its workers clean, run again with two datatrove workers (its
    LocalPipelineExecutor) doing lmforge's clean, decontamination and encode tasks, writes the local engine's files."""
    pytest.importorskip("datatrove")
    path, _ = planted
    out = tmp_path / "dt"
    proc = _prepare_process(tmp_path, path, out, 2, 0.02, True, 13, {"LMFORGE_TEST_ENGINE": "datatrove"})
    work = _kill_after_four_shards(proc, out)
    finished = len(list(work.glob("train-*.done")))
    assert finished and not (work / "train.clean.done").exists(), "prepare finished before it could be killed"
    fields = {"clean__near_dedup": True, "clean__decontam_ngram": 13, "data__shard_mb": 0.02}
    cfg = _cfg(path, out, data__num_workers=2, data__engine="datatrove", data__tasks=3,
               data__logging_dir=str(tmp_path / "dt-logs"), **fields)
    cfg.tokenizer.train_sample_mb = 1
    dt = prepare(cfg, quiet=True)
    cfg = _cfg(path, tmp_path / "local", data__num_workers=1, **fields)
    cfg.tokenizer.train_sample_mb = 1
    local = prepare(cfg, quiet=True)
    assert _outputs(out) == _outputs(tmp_path / "local")
    cleaning = dt.summary["cleaning"]
    assert cleaning == local.summary["cleaning"] and cleaning["removed_near_duplicate"] > 0
    assert dt.summary["decontamination"] == local.summary["decontamination"]
    # datatrove ran the stages, each as 3 tasks; cleaning only the shards the killed run had not finished.
    stages = sorted(p.name for p in (tmp_path / "dt-logs").iterdir())
    assert stages == ["01-clean_task", "02-decontam_task", "03-encode_task"]
    shards = []
    for stage in stages:
        assert len(list((tmp_path / "dt-logs" / stage / "completions").iterdir())) == 3
        stats = json.loads((tmp_path / "dt-logs" / stage / "stats.json").read_text(encoding="utf-8"))
        shards.append(stats[0]["stats"]["shards"])
    assert shards[0] == shards[2] - finished and shards[2] >= 15
    assert not (out / "data" / pipeline.WORK_DIR).exists()


FAKE_SBATCH = textwrap.dedent("""\
    #!{python}
    # A one-machine stand-in for Slurm's sbatch: runs every index of the script's job array, one after the
    # other, as Slurm would on the nodes (SLURM_ARRAY_TASK_ID set), then reports a job id.
    import os, re, subprocess, sys
    script = open(sys.argv[-1], encoding="utf-8").read()
    array = re.search(r"#SBATCH --array=0-(\\d+)", script)
    env = dict(os.environ, SLURM_NODELIST="localhost", RUN_OFFSET="0")
    pipeline = "launch_pickled_pipeline" in script  # else datatrove's stats merge, which is skipped
    for index in range(int(array.group(1)) + 1 if array and pipeline else 0):
        subprocess.run(["bash", sys.argv[-1]], env=dict(env, SLURM_ARRAY_TASK_ID=str(index)), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("Submitted batch job 4242")
""")
FAKE_SRUN = textwrap.dedent("""\
    #!{python}
    # srun -l -n 1 launch_pickled_pipeline PATH: run datatrove's launcher with the test's Python.
    import sys
    from datatrove.tools.launch_pickled_pipeline import main
    sys.argv = sys.argv[sys.argv.index("launch_pickled_pipeline"):]
    main()
""")


@pytest.mark.slow
def test_datatrove_slurm_executor_gives_the_local_engines_output(planted, tmp_path: Path, monkeypatch) -> None:
    """The Slurm path end to end on one machine: datatrove writes and submits its sbatch job arrays (to a
    stand-in sbatch that runs each array index as Slurm would), lmforge waits for the shards' results."""
    pytest.importorskip("datatrove")
    path, _ = planted
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("squeue", "#!/bin/sh\n"),
                       ("scontrol", "#!/bin/sh\necho localhost\n")):  # scontrol show hostnames
        (bin_dir / name).write_text(text.replace("{python}", sys.executable), encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    fields = {"clean__near_dedup": True, "data__val_fraction": 0.2}
    prepare(_cfg(path, tmp_path / "local", data__num_workers=1, **fields), quiet=True)
    cfg = _cfg(path, tmp_path / "slurm", data__engine="datatrove", data__executor="slurm", data__tasks=2,
               data__slurm_partition="test", data__logging_dir=str(tmp_path / "logs"), **fields)
    prepare(cfg, quiet=True)
    assert _outputs(tmp_path / "local") == _outputs(tmp_path / "slurm")
    script = (tmp_path / "logs" / "01-clean_task" / "launch_script.slurm").read_text(encoding="utf-8")
    assert "#SBATCH --partition=test" in script and "#SBATCH --array=0-1" in script
    assert len(list((tmp_path / "logs" / "02-encode_task" / "completions").iterdir())) == 2


def test_engine_options_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    from lmforge.data import engine
    from lmforge.errors import ConfigError

    data = Config().data
    data.engine, data.executor = "datatrove", "slurm"
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch"):
        engine.check_available(data)
    data.executor = "ray"
    real = engine.importlib.util.find_spec
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None if name == "ray" else real(name))
    with pytest.raises(ConfigError, match="ray is not installed"):
        engine.check_available(data)


@pytest.mark.slow
def test_killed_prepare_resumes_where_it_stopped(planted, tmp_path: Path, monkeypatch) -> None:
    path, _ = planted
    out = tmp_path / "killed"
    proc = _prepare_process(tmp_path, path, out, 1, 0.02, True)
    work = _kill_after_four_shards(proc, out)
    finished = {p: p.stat().st_mtime_ns for p in work.glob("train-*.done")}
    assert finished and not (work / "train.clean.done").exists(), "prepare finished before it could be killed"
    calls: list[Path] = []
    real = pipeline.clean_shard

    def counted(base, *args):
        calls.append(base)
        return real(base, *args)

    monkeypatch.setattr(pipeline, "clean_shard", counted)
    outputs = {}
    for name in ("killed", "fresh"):
        cfg = _cfg(path, tmp_path / name, data__num_workers=1, clean__near_dedup=True, data__shard_mb=0.02)
        cfg.tokenizer.train_sample_mb = 1
        assert not prepare(cfg, quiet=True).reused
        outputs[name] = _outputs(tmp_path / name)
        if name == "killed":
            resumed_calls, calls = calls, []
    # The shards finished before the kill were not cleaned again, and the result is the uninterrupted one.
    assert len(resumed_calls) == len(calls) - len(finished)
    assert not {Path(f"{b}.done") for b in resumed_calls} & set(finished)
    assert outputs["killed"] == outputs["fresh"]
