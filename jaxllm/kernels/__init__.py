"""Hardware kernels behind one switch: `model.kernels` names the set that the model and the inference code call.

- `reference`: plain jnp and `jax.nn.dot_product_attention`, the portable path that every GPU and TPU runs (XLA
  fuses it there; on GPU, dot_product_attention may pick cuDNN's fused attention) and the math every other set
  must equal (tests/test_kernels.py runs every test of the model, the step and generation under each set).
- `xla_cpu`: XLA:CPU on one device: the same math in the operand forms XLA:CPU's fast matmul kernels take.

Each set is a module with the same functions: dense, causal_attention, init_cache, cached_attention and
decode_layout. `resolve` turns `kernels=auto` (and `compute_dtype=auto`) into a concrete choice once, at start,
from the devices found and, on a CPU, from the measured matmul peak of each dtype; commands print the choice and
its reason. Nothing in the model asks which backend it runs on: it calls `get(cfg.kernels)`.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import jax

from jaxllm.config import ConfigError, ModelConfig
from jaxllm.kernels import probe, reference, xla_cpu

SETS: dict[str, ModuleType] = {"reference": reference, "xla_cpu": xla_cpu}
KERNEL_CHOICES = ("auto", *SETS)
DTYPE_CHOICES = ("auto", "float32", "bfloat16")
# bf16 is chosen on a CPU when its measured matmul peak is at least this many times float32's: the rest of a step
# (casts, norms, softmax) does not speed up with it
BF16_MIN_SPEEDUP = 1.25


def get(name: str) -> ModuleType:
    """The kernel set called `name`; 'auto' must be resolved first (resolve)."""
    if name not in SETS:
        raise ValueError(
            f"model.kernels={name!r} is not a kernel set ({', '.join(SETS)}); resolve 'auto' first "
            "with jaxllm.kernels.resolve"
        )
    return SETS[name]


@dataclasses.dataclass(frozen=True)
class Choice:
    kernels: str
    compute_dtype: str
    why: str  # one line: what decided each, e.g. 'xla_cpu (one CPU device); bfloat16 (bf16 matmul 4.1x float32)'


def choose(m: ModelConfig, devices=None) -> Choice:
    """The kernel set and compute dtype for model config `m` on `devices` (default: all of this process's view)."""
    if m.kernels not in KERNEL_CHOICES:  # before anything is measured
        raise ConfigError(f"model.kernels={m.kernels!r}: use {', '.join(KERNEL_CHOICES)}")
    devices = jax.devices() if devices is None else devices
    platform, n = devices[0].platform, len(devices)
    kernels, kernels_why = m.kernels, "as configured"
    if kernels == "auto":
        if platform != "cpu":
            kernels, kernels_why = "reference", f"{platform}"
        elif n == 1:
            kernels, kernels_why = "xla_cpu", "one CPU device"
        else:
            kernels, kernels_why = "reference", f"{n} CPU devices: the sharded path"
    dtype, dtype_why = m.compute_dtype, "as configured"
    if dtype == "auto":
        if platform != "cpu":
            dtype, dtype_why = "bfloat16", f"{platform}"
        else:
            peaks = probe.peaks()
            speedup = peaks["bfloat16"] / peaks["float32"]
            dtype = "bfloat16" if speedup >= BF16_MIN_SPEEDUP else "float32"
            dtype_why = (
                f"bf16 matmul {speedup:.2f}x float32 on this CPU: {peaks['bfloat16'] / 1e9:,.0f} against "
                f"{peaks['float32'] / 1e9:,.0f} GFLOP/s"
            )
    return Choice(kernels, dtype, f"kernels {kernels} ({kernels_why}), compute {dtype} ({dtype_why})")


def resolve(m: ModelConfig, devices=None) -> tuple[ModelConfig, Choice]:
    """`m` with kernels and compute_dtype made concrete (see choose), and the choice."""
    choice = choose(m, devices)
    return dataclasses.replace(m, kernels=choice.kernels, compute_dtype=choice.compute_dtype), choice
