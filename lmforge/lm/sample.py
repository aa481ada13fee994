"""Sampling with a KV cache, streamed token by token."""

from __future__ import annotations

import sys
from pathlib import Path
from collections.abc import Callable, Collection

import torch

from lmforge.config import MAX_COUNT, MAX_SEED, SampleConfig, check_option, is_int, is_number
from lmforge.data.tokenizer import Tokenizer
from lmforge.models.gpt import GPT, KVCache


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Probabilities (V,) after temperature, top-k and nucleus filtering."""
    logits = logits.float() / max(temperature, 1e-6)
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_p, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = cumulative - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        probs = probs / probs.sum()
    return probs


def pick_tokens(logits: torch.Tensor, temperature: list[float], top_k: list[int], top_p: list[float],
                gens: list[torch.Generator]) -> list[int]:
    """The next token of each row of logits (B, V), each row with its own settings and generator:
    greedy at temperature 0, else drawn by inverting the filtered distribution's CDF at one uniform
    number from the row's generator (so a row's draw does not depend on the other rows)."""
    logits = logits.float()
    B, V = logits.shape
    out = logits.argmax(-1).tolist()
    rows = [i for i in range(B) if temperature[i] > 0]
    if not rows:
        return out
    temps = torch.tensor([temperature[i] for i in rows], dtype=torch.float32, device=logits.device)
    x = logits[rows] / temps[:, None]  # (b, V)
    ks = torch.tensor([top_k[i] if 0 < top_k[i] < V else V for i in rows], device=logits.device)
    ps = torch.tensor([top_p[i] for i in rows], dtype=torch.float32, device=logits.device)
    probs = torch.softmax(x, dim=-1)
    if bool((ks < V).any()) or bool((ps < 1).any()):
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        rank = torch.arange(V, device=logits.device)[None, :]
        cumulative = sorted_p.cumsum(-1)
        # Keep the k most likely tokens and the smallest prefix whose mass reaches top_p (the most
        # likely token always stays).
        drop = (rank >= ks[:, None]) | ((cumulative - sorted_p >= ps[:, None]) & (ps[:, None] < 1))
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cdf = probs.double().cumsum(-1).cpu()
    u = torch.stack([torch.rand((), generator=gens[i], dtype=torch.float64) for i in rows]) * cdf[:, -1]
    picked = torch.searchsorted(cdf, u[:, None], right=True).clamp(max=V - 1)[:, 0]
    for row, token in zip(rows, picked.tolist()):
        out[row] = token
    return out


def pick_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator) -> int:
    """The next token id from one position's logits (V,): `pick_tokens` for one row."""
    return pick_tokens(logits[None], [temperature], [top_k], [top_p], [gen])[0]


@torch.no_grad()
def generate_ids(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    stop_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
    stop_ids: Collection[int] = (),
) -> list[int]:
    """Sample up to max_new_tokens after the prompt; generation ends before `stop_id` or any of `stop_ids`."""
    T = model.cfg.context_len
    gen = torch.Generator(device="cpu").manual_seed(seed)
    stops = set(stop_ids) | ({stop_id} if stop_id is not None else set())
    ids = list(prompt_ids) or [stop_id if stop_id is not None else 0]
    cache = KVCache(model.cfg.n_layer)
    pending = ids[-T:]
    out: list[int] = []
    for _ in range(max_new_tokens):
        if cache.length + len(pending) > T:
            # Out of context: restart the cache from the most recent half-window of tokens, so
            # the re-encoding cost is paid once per T/2 tokens rather than every token.
            cache = KVCache(model.cfg.n_layer)
            pending = ids[-max(1, T // 2) :]
        x = torch.tensor([pending], dtype=torch.long, device=device)
        logits = model(x, cache=cache)[0, -1]
        nxt = pick_token(logits, temperature, top_k, top_p, gen)
        if nxt in stops:
            break
        ids.append(nxt)
        out.append(nxt)
        pending = [nxt]
        if on_token is not None:
            on_token(nxt)
    return out


class StreamDecoder:
    """Turns a growing list of ids into text deltas without splitting multi-byte characters."""

    def __init__(self, tok: Tokenizer, write: Callable[[str], None]):
        self.tok, self.write = tok, write
        self.ids: list[int] = []
        self.emitted = 0

    def __call__(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return
        self.write(text[self.emitted :])
        self.emitted = len(text)


def sample_text(
    model: GPT,
    tok: Tokenizer,
    prompt: str,
    cfg: SampleConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    stream: Callable[[str], None] | None = None,
) -> str:
    prompt_ids = tok.encode(prompt) if prompt else []
    on_token = StreamDecoder(tok, stream) if stream is not None else None
    ids = generate_ids(model, prompt_ids, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                       seed=seed, device=device, stop_id=tok.eot_id, on_token=on_token)
    return prompt + tok.decode(ids)


def check_generate_options(cfg: SampleConfig, seed: int) -> None:
    """`lmforge generate`'s options, checked before the model is loaded; errors name the option."""
    check_option(is_int(cfg.max_new_tokens) and 0 <= cfg.max_new_tokens <= MAX_COUNT, "--max-new-tokens",
                 cfg.max_new_tokens, "must be an integer >= 0")
    check_option(is_number(cfg.temperature) and cfg.temperature >= 0, "--temperature", cfg.temperature,
                 "must be a finite number >= 0 (0: always the most likely token)")
    check_option(is_int(cfg.top_k) and 0 <= cfg.top_k <= MAX_COUNT, "--top-k", cfg.top_k, "must be an integer >= 0 (0: off)")
    check_option(is_number(cfg.top_p) and 0 < cfg.top_p <= 1, "--top-p", cfg.top_p, "must be in (0, 1] (1: off)")
    check_option(is_int(cfg.num_samples) and 1 <= cfg.num_samples <= 10_000, "--num-samples", cfg.num_samples,
                 "must be an integer in [1, 10000]")
    check_option(is_int(seed) and 0 <= seed <= MAX_SEED, "--seed", seed, f"must be an integer in [0, {MAX_SEED}]")


def generate(
    run_dir: str | Path,
    prompt: str | None = None,
    cfg: SampleConfig | None = None,
    seed: int = 0,
    stream: bool = True,
    device: str = "cpu",
) -> list[str]:
    """Generate from a trained run folder. With `prompt=None` the prompt is read from stdin."""
    from lmforge.lm.model import load_run_model
    from lmforge.trainer.runtime import check_device

    cfg = cfg or SampleConfig()
    check_generate_options(cfg, seed)
    check_device(device)
    if prompt is None:
        prompt = sys.stdin.read()
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # bytes the terminal's locale could not decode arrive as surrogates
        from lmforge.errors import ConfigError

        raise ConfigError(f"the prompt (--prompt or standard input) is not valid text at character {e.start + 1}; "
                          "pass UTF-8 text (check the terminal's locale, e.g. LANG=C.UTF-8)") from None
    model, tok, _ = load_run_model(Path(run_dir), device)
    texts = []
    for i in range(cfg.num_samples):
        if stream:
            sys.stdout.write(prompt)
            sys.stdout.flush()

            def write(s: str) -> None:
                sys.stdout.write(s)
                sys.stdout.flush()

            text = sample_text(model, tok, prompt, cfg, seed=seed + i, device=device, stream=write)
            sys.stdout.write("\n")
            if i + 1 < cfg.num_samples:
                sys.stdout.write("-" * 40 + "\n")
            sys.stdout.flush()
        else:
            text = sample_text(model, tok, prompt, cfg, seed=seed + i, device=device)
        texts.append(text)
    return texts
