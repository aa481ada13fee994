"""Continuous batching for a GPT: one scheduler thread steps every active sequence together.

Each iteration admits the requests that arrived (their prompts prefilled together, padded, in one
forward), then decodes one token for every active sequence in one forward over a slot cache
(`models.gpt.SlotKVCache`: per-sequence lengths and positions). A sequence leaves its slot when it
stops; a new one can take the slot at the next iteration, so short and long requests share the
model without waiting for each other. Sampling is lm.sample's (temperature, top-k, top-p, a seeded
generator per request); text is detokenized here, with stop strings cut and never streamed.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from lmforge.data.tokenizer import Tokenizer
from lmforge.lm.sample import pick_tokens
from lmforge.models.gpt import GPT, SlotKVCache
from lmforge.trainer.threads import StepTimer, ThreadGovernor


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings: the text ends before the first one
    stop_ids: Collection[int] = ()  # token ids that end the text (end-of-text, the chat's <|end|>)


@dataclass
class Event:
    kind: str  # "delta" (text), "done" (finish_reason, usage) or "error" (text)
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TextStream:
    """Token ids to text deltas: whole characters only, and nothing that may be the start of a stop string."""

    def __init__(self, tok: Tokenizer, stops: list[str]):
        self.tok, self.stops = tok, [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already emitted
        self.text = ""

    def add(self, token: int) -> tuple[str, bool]:
        """(text to emit, whether a stop string was reached)."""
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # the first bytes of a character: wait for the rest
            return "", False
        self.text = text
        for stop in self.stops:
            at = text.find(stop, max(0, self.sent - len(stop) + 1))
            if at >= 0:
                self.text = text[:at]
                return self._emit(at), True
        held = max((k for stop in self.stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
        return self._emit(len(text) - held), False

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.sent)
        delta = self.text[self.sent : upto]
        self.sent = upto
        return delta

    def flush(self) -> str:
        """What is left when generation ends without a stop string."""
        return self._emit(len(self.text))


class Request:
    """One sequence to generate. `emit(event)` is called from the engine thread."""

    def __init__(self, prompt_ids: list[int], sampling: Sampling, tok: Tokenizer, emit: Callable[[Event], None]):
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.emit = emit
        self.cancelled = threading.Event()
        seed = sampling.seed if sampling.seed is not None else random.randrange(2**62)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.stream = TextStream(tok, sampling.stop)
        self.ids = list(prompt_ids)  # prompt and generated tokens: a context restart re-reads the end
        self.generated = 0
        self.slot = -1
        self.next_input: int | None = None  # the sampled token the next decode step feeds


class Engine:
    """Owns the model on one thread; `submit` is safe from any thread."""

    def __init__(self, model: GPT, tok: Tokenizer, max_batch: int = 16, device: torch.device | str = "cpu"):
        self.model, self.tok, self.max_batch = model.eval(), tok, max_batch
        self.device = torch.device(device)
        c = model.cfg
        self.context_len = c.context_len
        dtype = next(model.parameters()).dtype
        self.cache = SlotKVCache(c.n_layer, max_batch, c.n_kv_head, c.d_model // c.n_head, c.context_len,
                                 dtype=dtype, device=self.device)
        self.free = list(range(max_batch))[::-1]
        self.active: dict[int, Request] = {}  # slot -> request
        self.inbox: queue.Queue[Request | None] = queue.Queue()
        self.stopping = threading.Event()
        # On a CPU shared with other programs, one thread can beat all of them (see trainer.threads).
        self.threads = ThreadGovernor(torch.get_num_threads(), torch.set_num_threads) \
            if self.device.type == "cpu" else None
        self.steps = 0  # decode forwards run (for tests and figures)
        self.max_rows_seen = 0  # the largest batch one decode forward held
        self.thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self.thread.start()

    def submit(self, req: Request) -> None:
        if self.stopping.is_set():
            req.emit(Event("error", "the server is shutting down"))
            return
        self.inbox.put(req)

    def close(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.inbox.put(None)
        self.thread.join(timeout)

    # --- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while not self.stopping.is_set():
                try:
                    self._admit(wait=not self.active)
                    if self.active:
                        self._decode()
                except Exception as e:  # noqa: BLE001 - a failed step must not take the server down
                    self._fail_all(f"generation failed: {type(e).__name__}: {e}")
        self._fail_all("the server is shutting down")
        while True:  # requests still queued when the engine stopped
            try:
                req = self.inbox.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                req.emit(Event("error", "the server is shutting down"))

    def _admit(self, wait: bool) -> None:
        new: list[Request] = []
        try:
            first = self.inbox.get(timeout=0.2) if wait else self.inbox.get_nowait()
        except queue.Empty:
            return
        pending = [first]
        while len(pending) < len(self.free):
            try:
                pending.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        for req in pending:
            if req is None:  # close()
                continue
            if req.cancelled.is_set():
                continue
            if req.sampling.max_tokens == 0:
                self._finish(req, "length")
                continue
            req.slot = self.free.pop()
            new.append(req)
        # Requests beyond the free slots wait in the inbox for the next iteration.
        if new:
            self._prefill(new)

    def _prefill(self, reqs: list[Request]) -> None:
        """Run the prompts (or a restarted context) of `reqs` from position 0 of their slots, together."""
        windows = []
        for req in reqs:
            self.cache.reset(req.slot)
            self.active[req.slot] = req
            # A prompt is at most the context (the server checks); a sequence that grew past it
            # restarts from its last half-context, as lm.sample does.
            keep = self.context_len if req.generated == 0 else self.context_len // 2
            windows.append(req.ids[-keep:] or [self.tok.eot_id])
        width = max(len(w) for w in windows)
        x = torch.full((len(reqs), width), self.tok.eot_id, dtype=torch.long)
        for i, w in enumerate(windows):
            x[i, : len(w)] = torch.tensor(w, dtype=torch.long)
        self.cache.select([r.slot for r in reqs])
        logits = self.model(x.to(self.device), cache=self.cache)  # (b, width, V)
        self.cache.commit([len(w) for w in windows])
        last = torch.tensor([len(w) - 1 for w in windows])
        self._sample(reqs, logits[torch.arange(len(reqs)), last])

    def _decode(self) -> None:
        full = [r for r in self.active.values() if int(self.cache.lengths[r.slot]) >= self.context_len]
        if full:
            self._prefill(full)
        reqs = [r for r in self.active.values() if r.next_input is not None]
        if not reqs:
            return
        self.cache.select([r.slot for r in reqs])
        x = torch.tensor([[r.next_input] for r in reqs], dtype=torch.long, device=self.device)
        with StepTimer() as timed:
            logits = self.model(x, cache=self.cache)[:, 0]  # (b, V)
        if self.threads is not None:
            # Per row, so that batches of different sizes compare.
            self.threads.observe(timed.wall_s / len(reqs), timed.cpu_s / len(reqs))
        self.cache.commit([1] * len(reqs))
        self.steps += 1
        self.max_rows_seen = max(self.max_rows_seen, len(reqs))
        self._sample(reqs, logits)

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> None:
        settings = [r.sampling for r in reqs]
        tokens = pick_tokens(logits, [s.temperature for s in settings], [s.top_k for s in settings],
                             [s.top_p for s in settings], [r.gen for r in reqs])
        for req, token in zip(reqs, tokens):
            req.next_input = None
            if req.cancelled.is_set():
                self._release(req)
                continue
            s = req.sampling
            if token in s.stop_ids:
                self._finish(req, "stop")
                continue
            req.ids.append(token)
            req.generated += 1
            delta, stopped = req.stream.add(token)
            if delta:
                req.emit(Event("delta", delta))
            if stopped:
                self._finish(req, "stop")
            elif req.generated >= s.max_tokens:
                self._finish(req, "length")
            else:
                req.next_input = token

    def _finish(self, req: Request, reason: str) -> None:
        rest = req.stream.flush()  # text held back as a possible stop string's start (none after a cut)
        if rest:
            req.emit(Event("delta", rest))
        req.emit(Event("done", finish_reason=reason, prompt_tokens=len(req.prompt_ids),
                       completion_tokens=req.generated))
        self._release(req)

    def _release(self, req: Request) -> None:
        if req.slot >= 0 and self.active.get(req.slot) is req:
            del self.active[req.slot]
            self.free.append(req.slot)
        req.slot = -1

    def _fail_all(self, message: str) -> None:
        for req in list(self.active.values()):
            req.emit(Event("error", message))
            self._release(req)
