"""Chat fine-tuning (supervised fine-tuning on conversations): `sft(cfg)`; the CLI only calls it.

A trained LM run is extended with the chat tokens (lm.chat): the tokenizer gains the role markers
and the chat template, the GPT's embedding (and output layer, shared or not) gains rows for them,
initialized to the mean of the existing rows. Each conversation is one example, cut to the context
and padded; the loss counts only the assistant replies and the <|end|> that closes each. Training
is the shared loop (trainer.loop.fit), so checkpoints, resume, time budgets, DDP and tracking work
as for pretraining.

The new run folder is a complete LM run (config.yaml, model.json, data/tokenizer.json,
model.safetensors), so `generate`, `serve`, `chat` and `export` take it like any other; sft.yaml
holds the fine-tuning settings, samples.json replies before and after fine-tuning.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from lmforge.atomic import atomic_write_json
from lmforge.config import (from_dict, save_config)
from lmforge.errors import ConfigError, DataError
from lmforge.lm.chat import ChatFormat, add_chat_tokens, read_conversations
from lmforge.models.gpt import GPT
from lmforge.trainer import checkpoint as ckpt
from lmforge.trainer.runtime import Runtime

from lmforge.lm.sft_config import (SFT_FILE, ChatDataConfig, ChatSampleConfig, SFTConfig,  # noqa: F401 - the API
                                   SFTTrainConfig)


# --- model ---------------------------------------------------------------------------------------


def resize_vocab(model: GPT, vocab_size: int) -> GPT:
    """A copy of `model` with `vocab_size` embedding (and output) rows: the old rows kept, new rows the
    mean of the old ones (a neutral start that keeps the output distribution close to the base's)."""
    if vocab_size < model.vocab_size:
        raise ValueError("the vocabulary can only grow")
    new = GPT(dataclasses.replace(model.cfg), vocab_size).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if k not in ("embed.weight", "lm_head.weight")}
    new.load_state_dict(state, strict=False)
    with torch.no_grad():
        old = model.embed.weight
        new.embed.weight[: model.vocab_size] = old
        new.embed.weight[model.vocab_size :] = old.mean(0)
        if not model.cfg.tied_embeddings:
            head = model.lm_head.weight
            new.lm_head.weight[: model.vocab_size] = head
            new.lm_head.weight[model.vocab_size :] = head.mean(0)
    return new


# --- data ----------------------------------------------------------------------------------------


@dataclass
class ChatRows:
    """Conversations as (N, T+1) padded token rows and next-token targets (-1: no loss)."""

    ids: np.ndarray  # (N, T+1) int64
    targets: np.ndarray  # (N, T) int64, the assistant tokens of ids[:, 1:], else -1
    truncated: int = 0  # conversations longer than the context, cut
    dropped: int = 0  # conversations with no assistant token inside the context

    def __len__(self) -> int:
        return len(self.ids)


def encode_rows(convs: list[list[dict]], fmt: ChatFormat, context_len: int) -> ChatRows:
    T = context_len
    ids = np.full((len(convs), T + 1), fmt.tok.eot_id, dtype=np.int64)
    targets = np.full((len(convs), T), -1, dtype=np.int64)
    n = truncated = dropped = 0
    for conv in convs:
        seq, mask = fmt.encode_with_mask(conv)
        if len(seq) > T + 1:
            truncated += 1
            seq, mask = seq[: T + 1], mask[: T + 1]
        if not any(mask[1:]):
            dropped += 1
            continue
        ids[n, : len(seq)] = seq
        targets[n, : len(seq) - 1] = np.where(mask[1:], seq[1:], -1)
        n += 1
    return ChatRows(ids[:n], targets[:n], truncated, dropped)


class SFTTask:
    """Examples are conversations; each epoch visits them in a seeded order (a pure function of the step)."""

    def __init__(self, model: GPT, train: ChatRows, val: ChatRows, batch_size: int, seed: int, eval_max_tokens: int):
        self.model, self.train, self.val, self.seed = model, train, val, seed
        self.examples_per_step = batch_size
        self.tokens_per_example = train.targets.shape[1]
        self.eval_max_tokens = eval_max_tokens

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.train))

    def micro_batch(self, step: int, micro: int, micro_batch_size: int, rt: Runtime):
        per_rank = self.examples_per_step // rt.world_size
        first = step * self.examples_per_step + rt.rank * per_rank + micro * micro_batch_size
        n = len(self.train)
        picks = [self._order(g // n)[g % n] for g in range(first, first + micro_batch_size)]
        x = torch.from_numpy(self.train.ids[picks, :-1])
        y = torch.from_numpy(self.train.targets[picks])
        return x.to(rt.device), y.to(rt.device)

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return model(x, y)

    def evaluate(self, model: torch.nn.Module, rt: Runtime, batch_size: int = 32) -> dict[str, float]:
        """Mean loss per assistant token over the validation conversations (up to eval.max_tokens of them)."""
        import torch.nn.functional as F

        T = self.tokens_per_example
        n_rows = max(1, min(len(self.val), self.eval_max_tokens // T))
        mine = np.arange(rt.rank, n_rows, rt.world_size)
        sums = torch.zeros(2, dtype=torch.float64)
        for i in range(0, len(mine), batch_size):
            rows = mine[i : i + batch_size]
            x = torch.from_numpy(self.val.ids[rows, :-1]).to(rt.device)
            y = torch.from_numpy(self.val.targets[rows]).to(rt.device)
            logits = model(x)
            nll = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                                  reduction="sum")
            sums += torch.stack([nll.double().cpu(), (y >= 0).sum().double().cpu()])
        if rt.distributed:
            import torch.distributed as dist

            sums = sums.to(rt.device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        loss = float(sums[0] / sums[1].clamp(min=1))
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(sums[1])}


def split_conversations(convs: list[list[dict]], val_fraction: float, seed: int):
    if len(convs) < 2:
        raise DataError("fine-tuning needs at least 2 conversations (one is held out for validation)")
    order = np.random.default_rng(seed).permutation(len(convs))
    n_val = min(len(convs) - 1, max(1, round(len(convs) * val_fraction)))
    return [convs[i] for i in order[n_val:]], [convs[i] for i in order[:n_val]]


def load_conversations(cfg: SFTConfig) -> list[list[dict]]:
    if cfg.data.demo:
        from lmforge.data.chat_demo import demo_conversations

        return demo_conversations(cfg.data.demo_conversations, cfg.seed)
    return read_conversations(cfg.data.path)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class SFTResult:
    run_dir: Path
    steps: int
    val_loss: float | None
    first_val_loss: float | None  # before any fine-tuning step
    best_val_loss: float | None
    wall_s: float
    stop_reason: str
    conversations: int
    samples: list[dict]


def load_sft_config(run_dir: Path) -> SFTConfig:
    path = Path(run_dir) / SFT_FILE
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} not found; pass the folder given as --out to `lmforge sft`")
    return from_dict(SFTConfig, yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=str(path)).validate()


def sft(cfg: SFTConfig | None = None, resume: str | Path | None = None, progress: bool = True) -> SFTResult:
    """Fine-tune cfg.base on conversations into cfg.out; with resume=RUN continue that fine-tuning run."""
    from lmforge.trainer.runtime import init_runtime, shutdown

    if resume is not None:
        cfg = load_sft_config(Path(resume))
        cfg.out = str(resume)
    elif cfg is None:
        raise ConfigError("sft() needs a config or resume=RUN_DIR")
    cfg.validate()
    rt = init_runtime(cfg.runtime.device, cfg.runtime.threads)
    try:
        result = _sft(cfg, rt, resume is not None, progress)
    except BaseException:
        shutdown(rt)
        raise
    shutdown(rt, finished=True)
    return result


def _write_run_files(cfg: SFTConfig, base_cfg, run_dir: Path, tok, model: GPT) -> None:
    """The fine-tuned run's own config.yaml (an LM config, so every LM command reads the folder), the
    fine-tuning settings, the extended tokenizer and the model's shape."""
    from lmforge.lm.model import save_shape

    run_dir.mkdir(parents=True, exist_ok=True)
    lm_cfg = dataclasses.replace(base_cfg, out=str(run_dir), seed=cfg.seed, optim=cfg.optim, schedule=cfg.schedule,
                                 runtime=cfg.runtime, eval=cfg.eval)
    lm_cfg.data = dataclasses.replace(base_cfg.data, path=cfg.data.path)
    lm_cfg.train = dataclasses.replace(base_cfg.train, max_steps=cfg.train.max_steps, track=cfg.train.track,
                                       time_budget_s=cfg.train.time_budget_s, log_interval=cfg.train.log_interval)
    save_config(lm_cfg, run_dir / "config.yaml")
    save_config(cfg, run_dir / SFT_FILE)
    tok.save(run_dir / "data" / "tokenizer.json")
    save_shape(model, run_dir / "model.json")


def reply_samples(model: GPT, fmt: ChatFormat, convs: list[list[dict]], cfg: ChatSampleConfig, seed: int,
                  device) -> list[dict]:
    """The model's reply to each conversation's last user turn (with what came before it)."""
    from lmforge.lm.sample import generate_ids

    out = []
    model.eval()
    for i, conv in enumerate(convs[: cfg.num_samples]):
        last_user = max(j for j, m in enumerate(conv) if m["role"] == "user") if any(
            m["role"] == "user" for m in conv) else len(conv) - 1
        context = conv[: last_user + 1]
        ids = generate_ids(model, fmt.prompt(context)[-model.cfg.context_len:], cfg.max_new_tokens, cfg.temperature,
                           seed=seed + i, device=device, stop_ids=fmt.stop_ids)
        expected = next((m["content"] for m in conv[last_user + 1 :] if m["role"] == "assistant"), "")
        out.append({"messages": context, "reply": fmt.tok.decode(ids), "reference": expected})
    return out


def _sft(cfg: SFTConfig, rt: Runtime, resume: bool, progress: bool) -> SFTResult:
    from lmforge.console import print_summary
    from lmforge.lm.model import load_run_model, model_from_shape, refuse_quantized
    from lmforge.trainer.loop import fit, seed_everything
    from lmforge.trainer.step import plan_batches

    run_dir = Path(cfg.out)
    refuse_quantized(cfg.base, "chat fine-tuning")
    base_model, base_tok, info = load_run_model(Path(cfg.base), rt.device)
    tok = add_chat_tokens(base_tok)
    fmt = ChatFormat(tok)
    seed_everything(cfg.seed)
    if resume:
        model = model_from_shape(run_dir / "model.json").to(rt.device)  # weights come from the checkpoint
    else:
        model = resize_vocab(base_model, tok.vocab_size)
    del base_model
    T = model.cfg.context_len
    convs = load_conversations(cfg)
    train_convs, val_convs = split_conversations(convs, cfg.data.val_fraction, cfg.seed)
    train_rows, val_rows = encode_rows(train_convs, fmt, T), encode_rows(val_convs, fmt, T)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise DataError(f"no conversation has an assistant reply within the model's context of {T} tokens; "
                        "shorten the conversations (the reply must start within the context)")
    if rt.is_main and not resume:
        _write_run_files(cfg, info["config"], run_dir, tok, model)
    rt.barrier()
    task = SFTTask(model, train_rows, val_rows, cfg.train.batch_size, cfg.seed, cfg.eval.max_tokens)
    micro_bs, accum = plan_batches(task.examples_per_step, cfg.train.micro_batch_size, rt.world_size)
    if progress and rt.is_main:
        print_summary("chat fine-tuning", [
            ("base", f"{cfg.base} ({model.num_params(non_embedding=False):,} parameters, context {T})"),
            ("conversations", f"{len(train_rows):,} train / {len(val_rows):,} validation from "
                              f"{'the demo plays' if cfg.data.demo else cfg.data.path}"
                              f" ({train_rows.truncated + val_rows.truncated:,} cut to the context, "
                              f"{train_rows.dropped + val_rows.dropped:,} without a reply inside it dropped)"),
            ("tokens", f"vocabulary {base_tok.vocab_size:,} -> {tok.vocab_size:,} (chat markers added)"),
            ("batch", f"{cfg.train.batch_size} conversations; micro-batch {micro_bs} x {accum} x {rt.world_size}"),
            ("schedule", f"{cfg.optim.kind}, lr {cfg.optim.lr:g} -> {cfg.schedule.min_lr:g}, {cfg.train.max_steps} steps"),
        ])
    if not resume:
        # The starting point, kept for the report and for a resumed run: the base model's loss on the
        # assistant tokens (with the new markers at their mean initialization) and its replies.
        with torch.no_grad():
            model.eval()
            first_val = task.evaluate(model, rt)["val_loss"]  # on every rank: it all-reduces
        if rt.is_main:
            before = reply_samples(model, fmt, val_convs, cfg.sample, cfg.seed, rt.device)
            atomic_write_json(run_dir / "sft_start.json", {"val_loss": first_val, "samples": before})
        rt.barrier()

    def save_best(weights: ckpt.WholeWeights) -> None:
        ckpt.save_weights(weights, run_dir / "model.safetensors", run_dir=run_dir)

    result = fit(task, cfg.train, cfg.optim, cfg.schedule, cfg.eval, rt, run_dir, resume=resume,
                 meta={"task": "sft", "base": str(cfg.base)}, on_best=save_best, progress=progress)
    m = result.last_metrics
    samples, first_val = [], None
    if rt.is_main:
        samples, first_val = _finish(cfg, run_dir, model, fmt, val_convs, result, len(convs), rt, progress)
    return SFTResult(run_dir=run_dir, steps=result.steps, val_loss=m.get("val_loss"), first_val_loss=first_val,
                     best_val_loss=result.best_val_loss, wall_s=result.wall_s, stop_reason=result.stop_reason,
                     conversations=len(convs), samples=samples)


def _finish(cfg: SFTConfig, run_dir: Path, model: GPT, fmt: ChatFormat, val_convs: list, result, n_convs: int,
            rt: Runtime, progress: bool) -> tuple[list[dict], float | None]:
    """After training (rank 0): replies after fine-tuning next to those before, result.json, plots, report."""
    from lmforge.console import console, fmt as fmt_num, print_summary
    from lmforge.report.runinfo import read_json
    from lmforge.trainer.metrics import plot_loss_curve

    m = result.last_metrics
    start = read_json(run_dir / "sft_start.json", {}) or {}
    first_val = start.get("val_loss")
    samples = [{"before": b} for b in start.get("samples", [])]
    if (run_dir / "model.safetensors").is_file():
        ckpt.load_weights(model, run_dir / "model.safetensors")  # the best validation weights
    after = reply_samples(model, fmt, val_convs, cfg.sample, cfg.seed, rt.device)
    samples += [{"before": None} for _ in range(len(after) - len(samples))]
    for s, a in zip(samples, after):
        s["after"] = a
    atomic_write_json(run_dir / "samples.json", samples)
    plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{run_dir.name}: assistant-token loss")
    atomic_write_json(run_dir / "result.json", {
        "task": "sft", "steps": result.steps, "val_loss": m.get("val_loss"), "val_ppl": m.get("val_ppl"),
        "first_val_loss": first_val, "best_val_loss": result.best_val_loss, "tokens_per_s": result.tokens_per_s,
        "wall_s": result.wall_s, "stop_reason": result.stop_reason, "conversations": n_convs})
    from lmforge.report.card import try_write_report

    try_write_report(run_dir)
    if progress:
        print_summary("result", [
            ("steps", f"{result.steps} ({result.stop_reason})"),
            ("assistant-token loss", f"{fmt_num(first_val)} before -> {fmt_num(m.get('val_loss'))} after"),
            ("wall time", f"{result.wall_s:.1f} s"), ("run folder", str(run_dir)),
            ("try it", f"lmforge chat {run_dir}   |   lmforge serve {run_dir}")])
        for s in samples:
            a = s["after"]
            console.rule("sample")
            console.print(f"user: {a['messages'][-1]['content']}\n"
                          + (f"before: {s['before']['reply']}\n" if s.get("before") else "")
                          + f"after: {a['reply']}", markup=False, highlight=False)
    return samples, first_val
