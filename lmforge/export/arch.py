"""Which standard architecture an lmforge model is, and where each of its tensors goes there.

lmforge's default (RMSNorm, rotary positions, SwiGLU, QK-norm, optional GQA) is Qwen3; without
QK-norm it is Llama; LayerNorm, learned positions and a GELU MLP are GPT-2. Biases on q, k and v
only (Qwen2's function) are Llama with attention_bias (and a zero output-projection bias) for
Transformers, whose AutoTokenizer rebuilds a qwen2 model's tokenizer from its own code (NFC, Qwen's
word rule) instead of reading tokenizer.json; in GGUF they are llama.cpp's qwen2.

Both layouts of rotary positions agree: lmforge, Llama and Qwen in Transformers rotate the two
halves of each head, so no permutation is needed for Hugging Face;
llama.cpp's `llama` architecture rotates interleaved pairs, so q and k rows are permuted for GGUF.

A `Link` ties one lmforge tensor to its tensors in Transformers and in GGUF: the same, its row
blocks (lmforge fuses q, k, v and gate, up), its transpose (GPT-2's Conv1D), or copies of it
(lmforge's one QK-norm gain is Qwen3's q_norm and k_norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError, DataError

HF_CLASS = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "gpt2": "GPT2LMHeadModel"}
# Transformers' model_type for each family that `import` reads (Mistral is Llama's layout).
IMPORTABLE = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
STANDARD = ("export needs one of two sets: RMSNorm, rotary positions and SwiGLU (model.norm rms, "
            "model.position rope, model.mlp swiglu: Qwen3 or Llama), or GPT-2's LayerNorm, learned "
            "positions and GELU (model.norm layer, model.position learned, model.mlp gelu or gelu_tanh)")


@dataclass(frozen=True)
class Link:
    lm: str  # lmforge state-dict name
    hf: tuple[str, ...]  # Transformers names: one, or the row blocks of the lmforge tensor
    gguf: tuple[str, ...]  # GGUF names, one per entry of hf
    shape: tuple[int, ...]  # the lmforge tensor's shape
    rows: tuple[int, ...] = ()  # row sizes when the lmforge tensor holds several
    transpose: bool = False  # Transformers keeps it transposed (GPT-2's Conv1D)
    shared: bool = False  # one lmforge tensor stands for every name in hf
    bias: bool = False  # may be absent on either side: zeros there
    rope_heads: tuple[int, ...] = ()  # GGUF llama: heads of each block, permuted to interleaved rotary

    def split(self, t: torch.Tensor) -> list[torch.Tensor]:
        """The lmforge tensor as its Transformers (or GGUF) pieces, in lmforge's orientation."""
        if self.shared:
            return [t] * len(self.hf)
        return list(t.split(list(self.rows))) if self.rows else [t]

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of split (with shared names, the first)."""
        if self.shared or len(parts) == 1:
            return parts[0]
        return torch.cat([p.to(parts[0].dtype) for p in parts])


def family_of(cfg: ModelConfig, target: str = "hf") -> str:
    """The standard architecture with exactly this model's function in Transformers (target 'hf') or
    llama.cpp ('gguf'), or a ConfigError naming the option."""
    s = cfg.resolved()
    gpt2_like = (s.norm, s.position, s.mlp != "swiglu")
    if gpt2_like == ("rms", "rope", False):
        if s.qk_norm:
            if s.bias:
                raise ConfigError("config field 'model.bias': Qwen3, the architecture with QK-norm, has no MLP "
                                  "biases; train with model.bias false (model.qkv_bias is fine)")
            return "qwen3"
        return "qwen2" if target == "gguf" and s.qkv_bias and not s.bias else "llama"
    if gpt2_like != ("layer", "learned", True):
        odd = "model.norm" if s.norm == "layer" else "model.position" if s.position == "learned" else "model.mlp"
        value = getattr(s, odd.split(".")[1])
        raise ConfigError(f"config field '{odd}': {value!r} with the rest of this model has no standard "
                          f"Transformers architecture; {STANDARD}")
    if s.qk_norm:
        raise ConfigError("config field 'model.qk_norm': GPT-2 has no QK-norm; train the GPT-2 set with "
                          "model.qk_norm false, or use model.norm rms, model.position rope, model.mlp swiglu (Qwen3)")
    if s.n_kv_head != s.n_head:
        raise ConfigError(f"config field 'model.n_kv_head': GPT-2 has no grouped-query attention; train with "
                          f"model.n_kv_head 0 (or {s.n_head})")
    if s.head_dim * s.n_head != s.d_model:
        raise ConfigError("config field 'model.head_dim': GPT-2 heads are d_model / n_head wide; train with "
                          "model.head_dim 0")
    return "gpt2"


def _llama_links(s: ModelConfig, family: str, vocab: int) -> list[Link]:
    d, hd, nh, nkv, ff = s.d_model, s.head_dim, s.n_head, s.n_kv_head, s.d_ff
    attn_bias = {"llama": s.bias or s.qkv_bias, "qwen2": True, "qwen3": s.qkv_bias}[family]
    mlp_bias = family == "llama" and s.bias
    rope = (nh, nkv, 0) if family == "llama" else ()  # llama.cpp's llama rotates interleaved pairs
    qkv_rows = (nh * hd, nkv * hd, nkv * hd)
    links = [Link("embed.weight", ("model.embed_tokens.weight",), ("token_embd.weight",), (vocab, d))]
    for i in range(s.n_layer):
        b, h, g = f"blocks.{i}.", f"model.layers.{i}.", f"blk.{i}."
        links.append(Link(b + "attn_norm.weight", (h + "input_layernorm.weight",), (g + "attn_norm.weight",), (d,)))
        for kind in ("weight", "bias") if attn_bias else ("weight",):
            shape = (sum(qkv_rows), d) if kind == "weight" else (sum(qkv_rows),)
            links.append(Link(b + f"attn.qkv.{kind}", tuple(h + f"self_attn.{p}_proj.{kind}" for p in "qkv"),
                              tuple(g + f"attn_{p}.{kind}" for p in "qkv"), shape, qkv_rows,
                              bias=kind == "bias", rope_heads=rope))
        links.append(Link(b + "attn.proj.weight", (h + "self_attn.o_proj.weight",), (g + "attn_output.weight",),
                          (d, nh * hd)))
        if attn_bias and family != "qwen2":
            links.append(Link(b + "attn.proj.bias", (h + "self_attn.o_proj.bias",), (g + "attn_output.bias",),
                              (d,), bias=True))
        if family == "qwen3":
            names, gguf = (h + "self_attn.q_norm.weight", h + "self_attn.k_norm.weight"), \
                (g + "attn_q_norm.weight", g + "attn_k_norm.weight")
            if s.qk_norm_shared:
                links.append(Link(b + "attn.qk_norm.weight", names, gguf, (hd,), shared=True))
            else:
                links.append(Link(b + "attn.q_norm.weight", names[:1], gguf[:1], (hd,)))
                links.append(Link(b + "attn.k_norm.weight", names[1:], gguf[1:], (hd,)))
        links.append(Link(b + "mlp_norm.weight", (h + "post_attention_layernorm.weight",), (g + "ffn_norm.weight",),
                          (d,)))
        for kind in ("weight", "bias") if mlp_bias else ("weight",):
            links.append(Link(b + f"mlp.gate_up.{kind}", (h + f"mlp.gate_proj.{kind}", h + f"mlp.up_proj.{kind}"),
                              (g + f"ffn_gate.{kind}", g + f"ffn_up.{kind}"),
                              (2 * ff, d) if kind == "weight" else (2 * ff,), (ff, ff), bias=kind == "bias"))
            links.append(Link(b + f"mlp.down.{kind}", (h + f"mlp.down_proj.{kind}",), (g + f"ffn_down.{kind}",),
                              (d, ff) if kind == "weight" else (d,), bias=kind == "bias"))
    links.append(Link("norm.weight", ("model.norm.weight",), ("output_norm.weight",), (d,)))
    if not s.tied_embeddings:
        links.append(Link("lm_head.weight", ("lm_head.weight",), ("output.weight",), (vocab, d)))
    return links


def _gpt2_links(s: ModelConfig, vocab: int) -> list[Link]:
    d, ff = s.d_model, s.d_ff
    links = [Link("embed.weight", ("transformer.wte.weight",), ("token_embd.weight",), (vocab, d)),
             Link("pos_embed.weight", ("transformer.wpe.weight",), ("position_embd.weight",), (s.context_len, d))]

    def pair(lm: str, hf: str, gguf: str, shape: tuple[int, ...], transpose: bool = False) -> list[Link]:
        bias_shape = shape[:1]
        return [Link(lm + ".weight", (hf + ".weight",), (gguf + ".weight",), shape, transpose=transpose),
                Link(lm + ".bias", (hf + ".bias",), (gguf + ".bias",), bias_shape, bias=True)]

    for i in range(s.n_layer):
        b, h, g = f"blocks.{i}.", f"transformer.h.{i}.", f"blk.{i}."
        links += pair(b + "attn_norm", h + "ln_1", g + "attn_norm", (d,))
        links += pair(b + "attn.qkv", h + "attn.c_attn", g + "attn_qkv", (3 * d, d), transpose=True)
        links += pair(b + "attn.proj", h + "attn.c_proj", g + "attn_output", (d, d), transpose=True)
        links += pair(b + "mlp_norm", h + "ln_2", g + "ffn_norm", (d,))
        links += pair(b + "mlp.up", h + "mlp.c_fc", g + "ffn_up", (ff, d), transpose=True)
        links += pair(b + "mlp.down", h + "mlp.c_proj", g + "ffn_down", (d, ff), transpose=True)
    links += pair("norm", "transformer.ln_f", "output_norm", (d,))
    if not s.tied_embeddings:
        links.append(Link("lm_head.weight", ("lm_head.weight",), ("output.weight",), (vocab, d)))
    return links


def links_for(cfg: ModelConfig, family: str, vocab: int) -> list[Link]:
    s = cfg.resolved()
    return _gpt2_links(s, vocab) if family == "gpt2" else _llama_links(s, family, vocab)


def hf_config(cfg: ModelConfig, family: str, vocab: int, eot_id: int, dtype: str) -> dict:
    """config.json of the Transformers model with exactly this model's function (dropout off: lmforge
    drops residual branches, which no standard class does, and inference never uses it)."""
    s = cfg.resolved()
    head = {"architectures": [HF_CLASS[family]], "model_type": family, "vocab_size": vocab}
    tail = {"tie_word_embeddings": s.tied_embeddings, "bos_token_id": eot_id, "eos_token_id": eot_id,
            "torch_dtype": dtype, "use_cache": True}
    if family == "gpt2":
        act = "gelu" if s.mlp == "gelu" else "gelu_new"
        return {**head, "n_positions": s.context_len, "n_embd": s.d_model, "n_layer": s.n_layer,
                "n_head": s.n_head, "n_inner": s.d_ff, "activation_function": act,
                "layer_norm_epsilon": s.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, **tail}
    body = {"hidden_size": s.d_model, "intermediate_size": s.d_ff, "num_hidden_layers": s.n_layer,
            "num_attention_heads": s.n_head, "num_key_value_heads": s.n_kv_head, "head_dim": s.head_dim,
            "hidden_act": "silu", "max_position_embeddings": s.context_len, "rms_norm_eps": s.norm_eps,
            "rope_theta": s.rope_base, "rope_scaling": None, "attention_dropout": 0.0}
    if family == "llama":
        body |= {"attention_bias": s.bias or s.qkv_bias, "mlp_bias": s.bias}
    else:
        body |= {"attention_bias": s.qkv_bias, "use_sliding_window": False, "sliding_window": None,
                 "max_window_layers": s.n_layer}
    return {**head, **body, **tail}


def _get(config: dict, key: str, source: str, default=None):
    value = config.get(key, default)
    if value is None:
        raise DataError(f"{source}: config.json lacks {key!r}")
    return value


def _rope_theta(config: dict, source: str) -> float:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind not in ("default", None):
        raise DataError(f"{source}: config.json asks for rotary scaling {kind!r}, which lmforge's model does not "
                        "implement; only checkpoints with plain rotary positions import exactly")
    return float(config.get("rope_theta", params.get("rope_theta", 10000.0)))


def model_config_from_hf(config: dict, source: str) -> tuple[ModelConfig, int, str]:
    """The lmforge model section, vocabulary size and family of a Transformers config.json."""
    model_type = config.get("model_type")
    if model_type not in IMPORTABLE:
        raise DataError(f"{source}: model_type {model_type!r} is not one lmforge imports "
                        f"({', '.join(IMPORTABLE)})")
    vocab = int(_get(config, "vocab_size", source))
    if model_type == "gpt2":
        return _gpt2_config(config, source), vocab, "gpt2"
    if config.get("hidden_act", "silu") != "silu":
        raise DataError(f"{source}: hidden_act {config.get('hidden_act')!r}; lmforge's SwiGLU uses silu")
    n_head = int(_get(config, "num_attention_heads", source))
    d_model = int(_get(config, "hidden_size", source))
    context = int(config.get("max_position_embeddings") or 2048)
    window = config.get("sliding_window")
    if window and (model_type == "mistral" or config.get("use_sliding_window")) and window < context:
        context = int(window)  # within the window, sliding-window attention is full attention
    # Biases a checkpoint has where lmforge's model has none must be zero (checked as they are read;
    # Llama's attention_bias alone is Qwen2's function when its output-projection bias is zero);
    # biases lmforge's model has where a checkpoint has none are zeros.
    llama_like = model_type in ("llama", "mistral")
    bias = llama_like and bool(config.get("mlp_bias"))
    qkv_bias = model_type == "qwen2" or (not bias and bool(config.get("attention_bias")))
    cfg = ModelConfig(
        n_layer=int(_get(config, "num_hidden_layers", source)), n_head=n_head,
        n_kv_head=int(config.get("num_key_value_heads") or n_head), d_model=d_model,
        d_ff=int(_get(config, "intermediate_size", source)), context_len=context, dropout=0.0,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)), qk_norm=model_type == "qwen3",
        norm="rms", position="rope", mlp="swiglu", rope_base=_rope_theta(config, source),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)), head_dim=int(config.get("head_dim") or d_model // n_head),
        bias=bias, qkv_bias=qkv_bias, qk_norm_shared=model_type != "qwen3",
    )
    cfg.validate()
    return cfg, vocab, "llama" if llama_like else model_type


def _gpt2_config(config: dict, source: str) -> ModelConfig:
    act = config.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise DataError(f"{source}: activation_function {act!r}; lmforge has {', '.join(GPT2_ACTIVATIONS)}")
    if config.get("scale_attn_by_inverse_layer_idx"):
        raise DataError(f"{source}: scale_attn_by_inverse_layer_idx is set, which lmforge's attention does not do")
    d_model = int(_get(config, "n_embd", source))
    cfg = ModelConfig(
        n_layer=int(_get(config, "n_layer", source)), n_head=int(_get(config, "n_head", source)), n_kv_head=0,
        d_model=d_model, d_ff=int(config.get("n_inner") or 4 * d_model),
        context_len=int(_get(config, "n_positions", source)), dropout=0.0,
        tied_embeddings=bool(config.get("tie_word_embeddings", True)), qk_norm=False, norm="layer",
        position="learned", mlp=GPT2_ACTIVATIONS[act], norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        bias=True,
    )
    cfg.validate()
    return cfg


def permute_rope(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from the half-split rotary layout to interleaved pairs (llama.cpp's llama)."""
    rest = t.shape[1:]
    hd = t.shape[0] // heads
    return t.reshape(heads, 2, hd // 2, *rest).transpose(1, 2).reshape(t.shape)
