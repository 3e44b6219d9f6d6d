"""Compute-optimal planning: published scaling rules, and the model shape of a family nearest a planned size.

For: turning a FLOP budget into a model size N (parameters) and a token count D by several published methods,
and finding the model shape of a family nearest a planned N (N and FLOPs are counted by jaxllm.model.accounting).
Not for: measuring our own scaling law (the sweep, `python -m jaxllm.scaling`, lives in jaxllm.scaling.sweep) or
fitting one (jaxllm.scaling.fit). Imports no JAX, so the planner runs anywhere in well under a second.

Conventions:
- N is the total parameter count, embeddings included, as Hoffmann et al. 2022 count it (Kaplan et al. 2020 leave
  embeddings out; Pearce & Song 2024 trace much of the gap between the two papers' exponents to that choice).
- C = 6·N·D is the planners' budget identity (Kaplan et al. 2020 section 2.1; Hoffmann et al. 2022 use it too).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from jaxllm.config import ConfigError, ModelConfig
from jaxllm.model.accounting import param_count


@dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta: loss in nats per token of a model of N parameters trained on D tokens."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n_params: float, n_tokens: float) -> float:
        return self.E + self.A / n_params**self.alpha + self.B / n_tokens**self.beta

    def optimum(self, flops: float) -> tuple[float, float]:
        """(N, D) minimising loss(N, D) subject to 6·N·D = flops, in closed form (Hoffmann et al. 2022, eq. 4):
        N = G·(C/6)^(beta/(alpha+beta)), D = (C/6)/N, G = (alpha·A / (beta·B))^(1/(alpha+beta))."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n_params = g * (flops / 6) ** (self.beta / (self.alpha + self.beta))
        return n_params, flops / 6 / n_params


# Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", eq. 10 (Approach 3), as printed in the
# paper's body. The TeX source has more digits (E=1.6934, alpha=0.3392, beta=0.2849); Besiroglu et al. 2024 show
# that the printed rounding moves the optimum noticeably. We keep the printed values, the ones readers compare to.
HOFFMANN_2022 = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
# Besiroglu, Erdil, Barnett, You 2024, "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102), their
# re-fit of Approach 3 on data read off Hoffmann et al.'s figure 4 (Huber loss, delta=1e-3, L-BFGS run to
# convergence). Its optimum keeps about 20 tokens per parameter, in line with Approaches 1 and 2.
BESIROGLU_2024 = LossLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
# Hoffmann et al. 2022, Approach 1 and Table 3: about 20 training tokens per parameter at the optimum.
CHINCHILLA_TOKENS_PER_PARAM = 20.0


@dataclass(frozen=True)
class Plan:
    method: str
    source: str
    n_params: float
    n_tokens: float
    loss: float | None  # predicted loss in nats per token, where the method gives one


def rule_of_20(flops: float) -> Plan:
    """C = 6·N·(20·N) solved for N."""
    n_params = math.sqrt(flops / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    return Plan(
        "chinchilla-20",
        "Hoffmann et al. 2022, Approach 1 (20 tokens per parameter)",
        n_params,
        CHINCHILLA_TOKENS_PER_PARAM * n_params,
        None,
    )


def _parametric(method: str, source: str, law: LossLaw):
    def plan(flops: float) -> Plan:
        n_params, n_tokens = law.optimum(flops)
        return Plan(method, source, n_params, n_tokens, law.loss(n_params, n_tokens))

    return plan


PLANNERS = (
    rule_of_20,
    _parametric("approach-3", "Hoffmann et al. 2022, Approach 3 fit", HOFFMANN_2022),
    _parametric("epoch-refit", "Besiroglu et al. 2024, Approach 3 re-fit", BESIROGLU_2024),
)


# ---------------------------------------------------------------------------------------------------------------
# Sizing: the shape of a family nearest a planned N

MAX_LAYERS = 256
# One-layer transformers cannot form induction heads (Olsson et al. 2022, "In-context learning and induction
# heads"); in base's IsoFLOP sweep (2e11-7e12 FLOPs) they sat off the multi-layer models' curve by up to 9%, so
# one L(N, D) could not fit both. The family starts at two layers.
MIN_LAYERS = 2
ASPECT_BAND = 4.0  # widths per layer allowed: within this factor of the experiment's own n_embd / n_layer
# Kaplan et al. 2020 (figure 5) find loss changes by a few percent at most over a 40x range of aspect ratio, so
# matching N comes first; this weight only breaks near-ties in favour of the experiment's own proportions.
ASPECT_WEIGHT = 0.05


def _with_shape(m: ModelConfig, n_layer: int, n_head: int) -> ModelConfig:
    """m with n_layer layers and n_head heads of m's head size; the GQA group size and MLP ratio are kept."""
    group = m.n_head // m.kv_heads
    n_embd = n_head * m.head_dim
    return dataclasses.replace(
        m,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_kv_head=n_head // group if m.n_kv_head else 0,
        mlp_hidden=round(m.mlp_hidden * n_embd / m.n_embd) if m.mlp_hidden else 0,
    )


def smallest_model(m: ModelConfig) -> ModelConfig:
    return _with_shape(m, MIN_LAYERS, m.n_head // m.kv_heads)


def size_model(m: ModelConfig, n_target: float) -> ModelConfig:
    """The shape of m's family (layers; heads of m's head size, so width = heads·head_dim) nearest n_target
    total parameters, with width per layer within ASPECT_BAND of m's. Returns smallest_model(m) when n_target is
    below it; callers decide whether that is close enough."""
    group = m.n_head // m.kv_heads  # heads must stay a multiple of the GQA group
    aspect_ref = m.n_embd / m.n_layer

    def cost(shape: ModelConfig) -> float:
        return abs(math.log(param_count(shape).total / n_target)) + ASPECT_WEIGHT * abs(
            math.log(shape.n_embd / shape.n_layer / aspect_ref)
        )

    best = smallest_model(m)
    for n_layer in range(MIN_LAYERS, MAX_LAYERS + 1):
        lo = max(1, math.ceil(aspect_ref * n_layer / ASPECT_BAND / m.head_dim / group))  # in units of group heads
        hi = max(lo, math.floor(aspect_ref * n_layer * ASPECT_BAND / m.head_dim / group))
        if param_count(_with_shape(m, n_layer, lo * group)).total > 4 * n_target:
            break  # N grows with depth at every allowed width: deeper shapes only get further away
        while hi - lo > 1:  # N grows with the head count: bisect for the pair of counts around n_target
            mid = (lo + hi) // 2
            if param_count(_with_shape(m, n_layer, mid * group)).total < n_target:
                lo = mid
            else:
                hi = mid
        for units in {lo, hi}:
            shape = _with_shape(m, n_layer, units * group)
            if cost(shape) < cost(best):
                best = shape
    return best


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the two command lines


def positive_number(flag: str, raw: str, example: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--{flag}={raw!r}: expected a positive number, e.g. --{flag}={example}")
    return value


def human(x: float) -> str:
    """1234567 -> '1.23M': counts of parameters, tokens and steps."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"
