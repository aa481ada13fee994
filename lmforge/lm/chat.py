"""The chat format: role markers as special tokens, conversations to token ids (with the assistant
mask for fine-tuning), conversation files in the OpenAI `messages` layout, and the terminal chat.

A conversation is encoded as
    <|endoftext|> <|system|>...<|end|> <|user|>...<|end|> <|assistant|>...<|end|> ...
and a reply is generated after a final `<|assistant|>` until `<|end|>`. Message contents are
encoded as text (a user typing "<|end|>" cannot forge a marker); the markers are inserted by id.
`CHAT_TEMPLATE` renders the same layout as text in the Hugging Face convention; it is stored in the
tokenizer file's metadata (field `chat_template`) so an export can put it in tokenizer_config.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.tokenizer import EOT_TOKEN, Tokenizer
from lmforge.errors import DataError

ROLES = ("system", "user", "assistant")
END = "<|end|>"
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
CHAT_TOKENS = [*ROLE_TOKENS.values(), END]
CHAT_TEMPLATE = (
    "{{ '" + EOT_TOKEN + "' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + END + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def add_chat_tokens(tok: Tokenizer) -> Tokenizer:
    """The tokenizer with the role markers in its vocabulary and the chat template in its metadata."""
    return tok.with_special_tokens(CHAT_TOKENS, CHAT_TEMPLATE)


def has_chat(tok: Tokenizer) -> bool:
    return tok.chat_template is not None and all(t in tok.special_ids for t in CHAT_TOKENS)


@dataclass
class ChatFormat:
    """Conversations to ids for one tokenizer that has the chat tokens."""

    tok: Tokenizer

    def __post_init__(self):
        if not has_chat(self.tok):
            raise DataError("this model has no chat format; fine-tune it on conversations first "
                            "(lmforge sft RUN --data chats.jsonl --out RUN2)")
        ids = self.tok.special_ids
        self.role_ids = {role: ids[token] for role, token in ROLE_TOKENS.items()}
        self.end_id = ids[END]

    @property
    def stop_ids(self) -> set[int]:
        return {self.end_id, self.tok.eot_id}

    def encode_with_mask(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """Token ids and, per id, whether it is part of an assistant reply (its text and its <|end|>)."""
        ids, mask = [self.tok.eot_id], [False]
        contents = self.tok.encode_batch([m["content"] for m in messages])
        for m, content in zip(messages, contents):
            reply = m["role"] == "assistant"
            ids += [self.role_ids[m["role"]], *content, self.end_id]
            mask += [False] + [reply] * (len(content) + 1)
        return ids, mask

    def prompt(self, messages: list[dict]) -> list[int]:
        """The ids of a conversation followed by the assistant marker: what a reply is generated after."""
        return self.encode_with_mask(messages)[0] + [self.role_ids["assistant"]]


def check_messages(messages: Any, where: str) -> list[dict]:
    """The messages of one conversation, checked; errors name `where` (a file and line, a request)."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"{where}: message {i} is a {type(m).__name__}, expected an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if isinstance(content, list):  # OpenAI's content parts: keep the text ones
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise DataError(f"{where}: message {i} has content parts other than text")
            content = "".join(parts)
        if not isinstance(content, str):
            raise DataError(f"{where}: message {i} has content {content!r}; expected text")
        out.append({"role": role, "content": content})
    return out


def read_conversations(path: str | Path) -> list[list[dict]]:
    """A JSON-lines file of {"messages": [{"role": ..., "content": ...}, ...]}, one conversation a line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; give a .jsonl file of conversations ({{\"messages\": [...]}})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    conversations = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg}); write one {{\"messages\": [...]}} object per line") from None
        if not isinstance(record, dict) or "messages" not in record:
            raise DataError(f"{where}: expected an object with a 'messages' list")
        messages = check_messages(record["messages"], where)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: the conversation has no assistant message to learn from")
        conversations.append(messages)
    if not conversations:
        raise DataError(f"{path}: no conversations found")
    return conversations


def chat_loop(run_dir: str | Path, system: str | None = None, max_new_tokens: int = 200, temperature: float = 0.8,
              top_k: int = 0, top_p: float = 0.95, seed: int = 0, device: str = "cpu",
              stdin=None, stdout=None) -> list[dict]:
    """`lmforge chat RUN`: read a user turn per line, stream the reply; '/reset' clears the history,
    '/exit' or end of input ends. Returns the conversation."""
    from lmforge.lm.model import load_run_model
    from lmforge.lm.sample import StreamDecoder, generate_ids

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tok, _ = load_run_model(Path(run_dir), device)
    fmt = ChatFormat(tok)
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    interactive = stdin.isatty()
    turn = 0
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history = list(base)
            continue
        history.append({"role": "user", "content": text})
        stdout.write("assistant> ")
        stdout.flush()

        def write(s: str) -> None:
            stdout.write(s)
            stdout.flush()

        ids = generate_ids(model, fmt.prompt(history), max_new_tokens, temperature, top_k, top_p,
                           seed=seed + turn, device=device, on_token=StreamDecoder(tok, write),
                           stop_ids=fmt.stop_ids)
        stdout.write("\n")
        history.append({"role": "assistant", "content": tok.decode(ids)})
        turn += 1
    return history
