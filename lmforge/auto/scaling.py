"""The quality rule: which shape and token count should reach the lowest validation loss.

Quality is predicted with a compute-optimal scaling rule, Chinchilla's parametric fit (Hoffmann et
al. 2022, approach 3): loss = E + 406.4/N^0.34 + 410.7/D^0.28 (N parameters, D training tokens). N
counts the transformer blocks only, as Kaplan et al. do: with a large vocabulary the embedding would
make a narrow model look big (BPE runs here agree). Its compute-optimal ratio of tokens to
parameters grows slowly with compute (as compute^0.1): tens of tokens per parameter at large-model
scale (the well-known "about 20"), about 8 for a CPU budget of minutes. Short runs on a 2-core CPU
put the best ratio between about 1 and 8, so the rule is only roughly right there (tiny
Shakespeare, 100 s, characters: 2 layers x 128 at 8 tokens per parameter beat 4 x 128 at 2 and
3 x 64 at 25); the candidate ranking adds a floor on tokens per parameter (see candidates).

The corpus caps the data: repeated tokens are worth less than fresh ones (the effective data
saturates after about 15 passes, after Muennighoff et al. 2023), and parameters beyond what the
unique tokens can feed saturate likewise. So many passes over a small corpus call for a smaller
model.
"""

from __future__ import annotations

import math

from lmforge.auto.inputs import PlanOptions


def effective_data(tokens: float, unique: float, saturation: float) -> float:
    """Tokens seen, discounted for repetition: fresh tokens count fully, repeats less and less."""
    if unique <= 0 or tokens <= unique:
        return tokens
    repeats = tokens / unique - 1
    return unique * (1 + saturation * (1 - math.exp(-repeats / saturation)))


def optimal_params_for(tokens: float, opt: PlanOptions) -> float:
    """Parameters that are compute-optimal for `tokens` under the rule (where dL/dlogN = dL/dlogD)."""
    A, a, B, b = opt.law
    return (a * A / (b * B) * max(tokens, 1.0) ** b) ** (1 / a)


def predicted_loss(params: float, tokens: float, unique_tokens: float, opt: PlanOptions) -> float:
    """Reducible loss A/N^alpha + B/D^beta, with repeated data discounted; only its order matters.

    When the corpus is repeated (tokens > unique_tokens), parameters beyond the compute-optimal
    size for the unique tokens also count for less and less (Muennighoff et al.'s R_N*).
    """
    A, a, B, b = opt.law
    d_eff = effective_data(tokens, unique_tokens, opt.repeat_saturation)
    n_eff = params
    if 0 < unique_tokens < tokens:
        n_eff = effective_data(params, optimal_params_for(unique_tokens, opt), opt.param_saturation)
    return A * max(n_eff, 1.0) ** -a + B * max(d_eff, 1.0) ** -b
