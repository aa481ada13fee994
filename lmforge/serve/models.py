"""What the server serves: run folders loaded as services (a GPT behind a batching engine, or a
classifier behind a micro-batcher), named and looked up by model id."""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from lmforge.errors import DataError
from lmforge.report.runinfo import has_weights, run_kind, weights_mtime

DEFAULT_MAX_BATCH = 16


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class LMService:
    """A language-model run: its GPT, tokenizer, chat format (when fine-tuned for chat) and engine."""

    task = "lm"

    def __init__(self, run_dir: Path, name: str, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH):
        from lmforge.lm.chat import ChatFormat, has_chat
        from lmforge.lm.model import load_run_model
        from lmforge.serve.engine import Engine

        self.run_dir, self.name = Path(run_dir), name
        model, self.tok, info = load_run_model(self.run_dir, device)
        self.weights = Path(info["weights"])
        self.context_len = model.cfg.context_len
        self.chat = ChatFormat(self.tok) if has_chat(self.tok) else None
        self.engine = Engine(model, self.tok, max_batch=max_batch, device=device)
        self.created = int(self.weights.stat().st_mtime)

    def describe(self) -> dict:
        return {"task": "lm", "chat": self.chat is not None, "context_len": self.context_len,
                "vocab_size": self.tok.vocab_size}

    def close(self) -> None:
        self.engine.close()


class ClassifierService:
    """A classifier run. Texts of requests that arrive together are classified in one call."""

    task = "classify"

    def __init__(self, run_dir: Path, name: str, device: str = "cpu"):
        from lmforge.classify.run import Classifier

        self.run_dir, self.name = Path(run_dir), name
        self.clf = Classifier(run_dir, device)
        self.labels = [str(n) for n in self.clf.labels.names]
        self.weights = self.run_dir / "ensemble.json"
        self.created = int(self.weights.stat().st_mtime)
        self.inbox: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"lmforge-classify-{name}", daemon=True)
        self.thread.start()

    def describe(self) -> dict:
        return {"task": "classify", "labels": self.labels}

    def classify(self, texts: list[str]) -> Future:
        fut: Future = Future()
        self.inbox.put((texts, fut))
        return fut

    def _run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    more = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.inbox.put(None)  # stop after this batch
                    break
                batch.append(more)
            texts = [t for texts, _ in batch for t in texts]
            try:
                proba = self.clf.predict_proba(texts) if texts else np.zeros((0, len(self.labels)))
            except Exception as e:  # noqa: BLE001 - answered to the callers
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            at = 0
            for texts_i, fut in batch:
                fut.set_result(proba[at : at + len(texts_i)])
                at += len(texts_i)

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(5)


def load_service(run_dir: Path, name: str, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH):
    kind = run_kind(run_dir)
    if kind == "lm":
        return LMService(run_dir, name, device, max_batch)
    if kind == "classify":
        return ClassifierService(run_dir, name, device)
    raise DataError(f"{run_dir} is not a trained lmforge run (no model.json with weights, no ensemble.json)")


class Registry:
    """Model ids to services. Fixed runs (`lmforge serve`) are loaded at start; a runs folder
    (`lmforge ui`) is scanned on each listing and its runs loaded on first use, a few at a time."""

    def __init__(self, runs: dict[str, Path] | None = None, runs_dir: Path | None = None, device: str = "cpu",
                 max_batch: int = DEFAULT_MAX_BATCH, keep: int = 3):
        self.fixed = dict(runs or {})
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self.device, self.max_batch, self.keep = device, max_batch, keep
        self.loaded: OrderedDict[str, object] = OrderedDict()
        self.lock = threading.Lock()
        for name, path in self.fixed.items():
            self.loaded[name] = load_service(path, name, device, max_batch)

    def paths(self) -> dict[str, Path]:
        found = dict(self.fixed)
        if self.runs_dir is not None and self.runs_dir.is_dir():
            for p in sorted(self.runs_dir.iterdir()):
                if p.is_dir() and not p.is_symlink() and has_weights(p):
                    found.setdefault(p.name, p)
        return found

    def get(self, name: str):
        with self.lock:
            service = self.loaded.get(name)
            if service is not None and name not in self.fixed and _stale(service):
                self.loaded.pop(name).close()  # retrained or resumed since it was loaded
                service = None
            if service is not None:
                self.loaded.move_to_end(name)
                return service
            path = self.paths().get(name)
            if path is None:
                raise ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
            service = load_service(path, name, self.device, self.max_batch)
            self.loaded[name] = service
            while len(self.loaded) > self.keep + len(self.fixed):
                oldest = next(n for n in self.loaded if n not in self.fixed)
                self.loaded.pop(oldest).close()
            return service

    def close(self) -> None:
        with self.lock:
            for service in self.loaded.values():
                service.close()
            self.loaded.clear()


def _stale(service) -> bool:
    try:
        return int(service.weights.stat().st_mtime) != service.created
    except OSError:
        return True


def model_card(name: str, path: Path, service=None) -> dict:
    created = service.created if service is not None else int(weights_mtime(path))
    card = {"id": name, "object": "model", "created": created, "owned_by": "lmforge"}
    if service is not None:
        card["lmforge"] = service.describe()
    else:
        card["lmforge"] = {"task": run_kind(path)}
    return card
