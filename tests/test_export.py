"""Models in and out: Hugging Face export and import, GGUF export, with logit parity against Transformers.

Every model is tiny and random, built in the test; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.cli import main
from lmforge.config import Config, ModelConfig, TokenizerConfig, save_config
from lmforge.data.tokenizer import EOT_TOKEN, MAX_PIECE_CHARS, Tokenizer, train_tokenizer
from lmforge.lm.model import load_run_model, save_shape
from lmforge.lm.sample import generate_ids
from lmforge.models.gpt import GPT
from lmforge.trainer.checkpoint import save_weights

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024, they'll say 12345 times!\n\n",
    "  Leading spaces\tand tabs\r\n    indented code: return x * 2  # double\n\n\n",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。我们在北京学习人工智能。\n",
    "Emoji 😀👍🏽 and 👩‍👩‍👧, café vs cafe\u0301, ｆｕｌｌ width, 한국어, カタカナ.\n",
] * 10

ROUND_TRIP_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                    "generation_config.json")
# Each architecture option, with the Transformers class it must export to.
VARIANTS = {
    "qwen3": ({"n_kv_head": 2}, "Qwen3ForCausalLM"),
    "qwen3_head_dim_gains_bias": ({"head_dim": 12, "qk_norm_shared": False, "qkv_bias": True,
                                   "tied_embeddings": False}, "Qwen3ForCausalLM"),
    "llama": ({"qk_norm": False, "n_kv_head": 2, "tied_embeddings": False}, "LlamaForCausalLM"),
    "llama_bias": ({"qk_norm": False, "bias": True, "rope_base": 500.0}, "LlamaForCausalLM"),
    # Qwen2's function; Transformers 5 would rebuild a qwen2 model's tokenizer from code, so it exports as Llama.
    "qkv_bias": ({"qk_norm": False, "qkv_bias": True, "n_kv_head": 1}, "LlamaForCausalLM"),
    "gpt2": ({"qk_norm": False, "norm": "layer", "position": "learned", "mlp": "gelu"}, "GPT2LMHeadModel"),
    "gpt2_tanh_bias": ({"qk_norm": False, "norm": "layer", "position": "learned", "mlp": "gelu_tanh", "bias": True,
                        "tied_embeddings": False, "norm_eps": 1e-6}, "GPT2LMHeadModel"),
}


@pytest.fixture(scope="module")
def qwen2_tok() -> Tokenizer:
    return train_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=320, pretokenizer="qwen2"))


def make_run(folder: Path, tok: Tokenizer, seed: int = 0, **model_kw) -> GPT:
    """A run folder with random weights (norm gains and biases random too, so every tensor matters)."""
    cfg = ModelConfig(**{"n_layer": 2, "n_head": 4, "d_model": 32, "context_len": 64, **model_kw})
    torch.manual_seed(seed)
    model = GPT(cfg, tok.vocab_size).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    folder.mkdir(parents=True)
    save_config(Config(out=str(folder), model=cfg), folder / "config.yaml")
    save_shape(model, folder / "model.json")
    save_weights(model.state_dict(), folder / "model.safetensors")
    tok.save(folder / "data" / "tokenizer.json")
    return model


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    hf.generation_config.eos_token_id = None  # compare all n tokens, whatever they are
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_export_matches_transformers_and_round_trips(variant, qwen2_tok, tmp_path):
    options, hf_class = VARIANTS[variant]
    model = make_run(tmp_path / "run", qwen2_tok, **options)
    out, back, again = tmp_path / "hf", tmp_path / "imported", tmp_path / "hf2"
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == hf_class
    ids = torch.randint(0, qwen2_tok.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits(hf, ids), logits(model, ids), atol=1e-4, rtol=0)
    prompt = ids[0, :8].tolist()
    greedy = generate_ids(model, prompt, 32, temperature=0)
    assert hf_greedy(hf, prompt, 32) == greedy

    assert main(["import", str(out), "--out", str(back)]) == 0
    imported, tok, _ = load_run_model(back)
    assert tok.kind == "hf" and tok.encode(CORPUS[0]) == qwen2_tok.encode(CORPUS[0])
    torch.testing.assert_close(logits(imported, ids), logits(model, ids), atol=1e-4, rtol=0)
    assert generate_ids(imported, prompt, 32, temperature=0) == greedy

    assert main(["export", str(back), "--to", "hf", "--out", str(again)]) == 0
    for name in ROUND_TRIP_FILES:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_hf_export_dtypes_and_model_card(qwen2_tok, tmp_path):
    model = make_run(tmp_path / "run", qwen2_tok)
    (tmp_path / "run" / "result.json").write_text(json.dumps({"steps": 7, "val_bpb": 1.5}))
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "bf16"),
                 "--dtype", "bf16"]) == 0
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    ids = torch.randint(0, qwen2_tok.vocab_size, (1, 32), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(logits(hf, ids), logits(model, ids), atol=0.05, rtol=0)
    card = (tmp_path / "bf16" / "README.md").read_text()
    assert "Qwen3ForCausalLM" in card and "val bpb: 1.5" in card and "lmforge export" in card
    # Re-exporting into a folder with files in it needs --overwrite.
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "bf16")]) == 2
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "bf16"), "--overwrite"]) == 0


# --- the other direction: checkpoints made by Transformers ----------------------------------------


def sentencepiece_style_tokenizer() -> dict:
    """A Llama-2/Mistral-style tokenizer.json: BPE on "▁"-marked text with byte fallback."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    hf.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=450, special_tokens=["<unk>", "<s>", "</s>", *bytes_],
                                  show_progress=False)
    hf.train_from_iterator(CORPUS, trainer=trainer)
    return json.loads(hf.to_str())


def qwen_style(spec: dict) -> dict:
    """A qwen2-rule tokenizer.json as Qwen ships it: NFC first, contractions matched case-insensitively."""
    spec = json.loads(json.dumps(spec))
    split = spec["pre_tokenizer"]["pretokenizers"][0]
    split["pattern"]["Regex"] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)" + split["pattern"]["Regex"].split(")", 1)[1]
    spec["normalizer"] = {"type": "NFC"}
    return spec


def save_hf_checkpoint(folder: Path, config, tokenizer_json: dict, eos: str, dtype: torch.dtype,
                       shard: str | None = None):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    model.to(dtype).save_pretrained(folder, max_shard_size=shard or "5GB")
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    # The class that reads tokenizer.json as it is (Transformers 5 rebuilds some, e.g. Qwen2Tokenizer adds NFC).
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos, "chat_template": "{{ x }}",
                                                              "tokenizer_class": "PreTrainedTokenizerFast"}))
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_checkpoints() -> dict:
    small = {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
             "rms_norm_eps": 1e-6, "rope_theta": 50000.0}
    return {
        "llama_bf16": (transformers.LlamaConfig(**small, tie_word_embeddings=False), torch.bfloat16, None,
                       "gpt2-bytes"),
        "mistral_sentencepiece_fp16": (transformers.MistralConfig(**small, sliding_window=4096),
                                       torch.float16, None, "sentencepiece"),
        "qwen2_sharded": (transformers.Qwen2Config(**small, tie_word_embeddings=True), torch.float32, "40KB",
                          "gpt2-bytes"),
        "qwen3_head_dim": (transformers.Qwen3Config(**{**small, "head_dim": 16}, tie_word_embeddings=True),
                           torch.bfloat16, "60KB", "gpt2-bytes"),
        "gpt2": (transformers.GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4),
                 torch.float32, None, "gpt2-bytes"),
    }


@pytest.mark.parametrize("name", ["llama_bf16", "mistral_sentencepiece_fp16", "qwen2_sharded", "qwen3_head_dim",
                                  "gpt2"])
def test_import_transformers_checkpoints(name, qwen2_tok, tmp_path):
    config, dtype, shard, tok_kind = hf_checkpoints()[name]
    spec, eos = (qwen2_tok.hf_json(), EOT_TOKEN) if tok_kind == "gpt2-bytes" else (sentencepiece_style_tokenizer(), "</s>")
    if name.startswith("qwen2"):  # as Qwen ships it, which is what Transformers' Qwen2Tokenizer rebuilds
        spec = qwen_style(spec)
    src = tmp_path / "src"
    hf = save_hf_checkpoint(src, config, spec, eos, dtype, shard)
    if shard:
        assert (src / "model.safetensors.index.json").is_file()
    run = tmp_path / "run"
    assert main(["import", str(src), "--out", str(run)]) == 0
    model, tok, _ = load_run_model(run)
    ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(logits(model, ids), logits(hf, ids), atol=1e-4, rtol=0)
    prompt = ids[0, :6].tolist()
    assert generate_ids(model, prompt, 32, temperature=0) == hf_greedy(hf, prompt, 32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(src)
    for text in CORPUS[:4]:
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    assert tok.eot_id == hf_tok.convert_tokens_to_ids(eos)
    # Back out: the same function in Transformers, the chat template kept.
    assert main(["export", str(run), "--to", "hf", "--out", str(tmp_path / "out")]) == 0
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    torch.testing.assert_close(logits(again, ids), logits(hf, ids), atol=1e-4, rtol=0)
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["chat_template"] == "{{ x }}"


def test_import_refuses_what_it_cannot_run_exactly(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    config = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
              "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    (src / "config.json").write_text(json.dumps(config))
    assert main(["import", str(src), "--out", str(tmp_path / "run")]) == 2
    assert "rotary scaling 'llama3'" in capsys.readouterr().err
    (src / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    assert main(["import", str(src), "--out", str(tmp_path / "run")]) == 2
    assert "model_type 'falcon'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- tokenizer parity ------------------------------------------------------------------------------

TOKENIZERS = {
    "bpe-lmforge-cjk-char": TokenizerConfig(kind="bpe", vocab_size=400),
    "bpe-lmforge-cjk-none": TokenizerConfig(kind="bpe", vocab_size=400, cjk_split="none"),
    "bpe-qwen2": TokenizerConfig(kind="bpe", vocab_size=400, pretokenizer="qwen2"),
    "bpe-llama3": TokenizerConfig(kind="bpe", vocab_size=400, pretokenizer="llama3"),
    "bpe-gpt2": TokenizerConfig(kind="bpe", vocab_size=400, pretokenizer="gpt2"),
    "char": TokenizerConfig(kind="char"),
}
TRICKY = ["👩‍👩‍👧‍👦", "👍🏽", "e\u0301", "\x00", "\r", "\r\n", "\t", "\u200b", "\ufeff", " ", "   ", "\n\n", "\n \n",
          "中", "中文", "，", "。", "𠀀", "가", "カ", EOT_TOKEN, "<0x41>", "'s", "'S", "'ſ", "12345", "١٢", "word",
          " word", "\u3000", "\x1c", "\u2028"]
TEXT = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(st.characters(exclude_categories=("Cs",)), max_size=40)),
                max_size=10).map("".join)


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def exported_tokenizer(request, tmp_path_factory):
    tok = train_tokenizer(CORPUS, TOKENIZERS[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    make_run(folder / "run", tok, n_layer=1)
    assert main(["export", str(folder / "run"), "--to", "hf", "--out", str(folder / "hf")]) == 0
    return tok, transformers.AutoTokenizer.from_pretrained(folder / "hf")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_exported_tokenizer_encodes_and_decodes_as_lmforge(exported_tokenizer, text):
    tok, hf = exported_tokenizer
    ids = tok.encode(text)
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == text


def test_exported_tokenizer_long_lines_and_documents(exported_tokenizer):
    tok, hf = exported_tokenizer
    long_line = ("word " * 5000 + "x" * (MAX_PIECE_CHARS + 10) + " 中文" * 3000 + "\n") * 2
    for text in (long_line, "".join(CORPUS), "a" * (2 * MAX_PIECE_CHARS + 3)):
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == text


def test_jieba_tokenizer_refuses_hf_export(tmp_path, capsys):
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=300, cjk_split="jieba"))
    make_run(tmp_path / "run", tok, n_layer=1)
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert "cjk_split" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


# --- GGUF ------------------------------------------------------------------------------------------

# Shapes Transformers' GGUF loader rebuilds (it reads no head width for qwen3, no n_positions for gpt2).
GGUF_VARIANTS = {
    "qwen3": {"n_head": 2, "n_kv_head": 1, "head_dim": 128},
    "llama": {"qk_norm": False, "n_kv_head": 2, "tied_embeddings": False},
    "qwen2": {"qk_norm": False, "qkv_bias": True},
    "gpt2": {"qk_norm": False, "norm": "layer", "position": "learned", "mlp": "gelu_tanh", "context_len": 1024},
}


@pytest.mark.parametrize("variant", list(GGUF_VARIANTS))
def test_gguf_reads_back_and_loads_in_transformers(variant, qwen2_tok, tmp_path):
    model = make_run(tmp_path / "run", qwen2_tok, **GGUF_VARIANTS[variant])
    ids = torch.randint(0, qwen2_tok.vocab_size, (1, 40), generator=torch.Generator().manual_seed(4))
    expected = logits(model, ids)
    for dtype, atol in (("f32", 1e-4), ("f16", 2e-3), ("q8_0", None), ("bf16", None)):
        path = tmp_path / f"model-{dtype}.gguf"
        assert main(["export", str(tmp_path / "run"), "--to", "gguf", "--out", str(path), "--dtype", dtype]) == 0
        reader = gguf.GGUFReader(str(path))
        fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
        assert fields["general.architecture"] == variant
        assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "qwen2"
        assert fields["tokenizer.ggml.tokens"][qwen2_tok.eot_id] == EOT_TOKEN
        assert fields["tokenizer.ggml.eos_token_id"] == qwen2_tok.eot_id
        assert fields["tokenizer.ggml.add_bos_token"] is False
        assert fields[f"{variant}.context_length"] == model.cfg.context_len
        assert fields[f"{variant}.block_count"] == 2
        tensors = {t.name: t for t in reader.tensors}
        assert "token_embd.weight" in tensors and "blk.1.ffn_down.weight" in tensors
        want = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "bf16": "BF16"}[dtype]
        assert tensors["blk.0.ffn_up.weight"].tensor_type.name == want
        assert tensors["output_norm.weight"].tensor_type.name == "F32"
        if atol is not None:
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                                   dtype=torch.float32).eval()
            torch.testing.assert_close(logits(hf, ids), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("tokenizer, model, message", [
    (TokenizerConfig(kind="char"), {}, "tokenizer.kind"),
    (TokenizerConfig(kind="bpe", vocab_size=300), {}, "tokenizer.pretokenizer"),
    (TokenizerConfig(kind="bpe", vocab_size=300, pretokenizer="llama3"),
     {"qk_norm": False, "norm": "layer", "position": "learned", "mlp": "gelu"}, "model.mlp"),
    (TokenizerConfig(kind="bpe", vocab_size=300, pretokenizer="gpt2"), {"norm": "layer"}, "model.norm"),
])
def test_gguf_refuses_what_llama_cpp_cannot_reproduce(tokenizer, model, message, tmp_path, capsys):
    make_run(tmp_path / "run", train_tokenizer(CORPUS, tokenizer), n_layer=1, **model)
    path = tmp_path / "m.gguf"
    assert main(["export", str(tmp_path / "run"), "--to", "gguf", "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "lmforge: error:" in err
    assert not path.exists()


def test_gguf_pre_tokenizer_of_an_imported_tokenizer(qwen2_tok, tmp_path):
    """A Qwen2-style tokenizer.json (case-insensitive contractions, as Qwen ships it) maps to llama.cpp's qwen2."""
    from lmforge.data.tokenizer import hf_tokenizer
    from lmforge.export.gguf import pre_name

    spec = qwen_style(qwen2_tok.hf_json())
    assert pre_name(hf_tokenizer(spec, {"eos_token": EOT_TOKEN}, "test")) == "qwen2"
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+"
    with pytest.raises(Exception, match="convert_hf_to_gguf"):
        pre_name(hf_tokenizer(spec, {"eos_token": EOT_TOKEN}, "test"))


# --- the commands on an imported model ---------------------------------------------------------------


def test_imported_model_generates_evaluates_and_trains_on(qwen2_tok, tmp_path, capsys):
    config = transformers.Qwen2Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    src = tmp_path / "src"
    save_hf_checkpoint(src, config, qwen2_tok.hf_json(), EOT_TOKEN, torch.bfloat16)
    text = tmp_path / "text.txt"
    text.write_text("".join(CORPUS) * 3, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--init", str(src), "--data", str(text), "--out", str(run), "--model.context_len", "32",
                 "--train.max_steps", "20", "--train.global_batch_tokens", "256", "--optim.lr", "3e-3",
                 "--schedule.warmup_steps", "2", "--eval.interval", "20", "--eval.max_tokens", "2048",
                 "--sample.num_samples", "0", "--runtime.compile", "off", "--runtime.precision", "fp32",
                 "--runtime.threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert losses[-1] < losses[0]  # training on from the imported weights lowers the loss
    assert (run / "init" / "import.json").is_file() and result["steps"] == 20
    saved = json.loads((run / "model.json").read_text())
    assert saved["context_len"] == 32 and saved["qkv_bias"] and saved["vocab_size"] == 320

    # The imported folder itself: generate, eval on a file, the GPT classifier's loader.
    imported = run / "init"
    assert main(["generate", str(imported), "--prompt", "The quick", "--max-new-tokens", "8",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("The quick")
    assert main(["eval", str(imported), "--data", str(text), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] > 0
    assert main(["eval", str(imported)]) == 2
    assert "--data" in capsys.readouterr().err
    # The trained run exports again.
    assert main(["export", str(run), "--to", "gguf", "--out", str(tmp_path / "m.gguf"), "--dtype", "q8_0"]) == 0
    assert main(["train", "--init", str(src), "--model.n_layer", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--model.n_layer" in capsys.readouterr().err


def test_classifier_fine_tunes_an_imported_model(qwen2_tok, tmp_path):
    from classify_synth import sentiment_records, write_jsonl

    config = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=128)
    save_hf_checkpoint(tmp_path / "src", config, qwen2_tok.hf_json(), EOT_TOKEN, torch.float32)
    assert main(["import", str(tmp_path / "src"), "--out", str(tmp_path / "lm")]) == 0
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_records(200, seed=0))
    assert main(["classify", "train", "--data", str(train), "--text-field", "text", "--label-field", "label",
                 "--out", str(tmp_path / "clf"), "--model.kind", "gpt", "--model.gpt.run", str(tmp_path / "lm"),
                 "--train.max_steps", "20", "--runtime.threads", "1"]) == 0
    assert (tmp_path / "clf" / "metrics.json").is_file()
