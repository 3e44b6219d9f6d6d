"""Typed, frozen configuration: one dataclass per section, experiments as Python functions, CLI overrides.

An experiment is a file `experiments/NAME.py` (or any path) defining `config() -> Config`. Every field of every
section can be overridden on the command line as `--section.key=value` (nested sections: `--a.b.c=value`); the
value is parsed to the field's declared type, and unknown or mistyped keys raise `ConfigError` with a one-line
message. This module knows nothing of JAX: it is imported by every command, including the cheap ones.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib
import re
import typing
from dataclasses import dataclass, field

from jaxllm.config.clean import CleanConfig

# experiments/ beside the package: a checkout, or an editable install of one (pip install -e .)
EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parents[2] / "experiments"


class ConfigError(ValueError):
    """A user-facing configuration problem; the CLI prints it as one line and exits with status 2."""


@dataclass(frozen=True)
class ModelConfig:
    family: str = "gpt2"  # 'gpt2': learned positions, LayerNorm, GELU; 'llama': RoPE, RMSNorm, SwiGLU, GQA
    vocab_size: int = 8192
    block_size: int = 256  # context length in tokens
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0  # 0 means n_head (plain multi-head attention)
    n_embd: int = 384
    mlp_hidden: int = 0  # 0 means 4 * n_embd (gpt2) or the Llama rule 8/3 * n_embd rounded up to 64
    tie_embeddings: bool = True
    # 'auto' | 'float32' | 'bfloat16' (matmuls in bf16; parameters stay float32). auto: bf16 on GPU/TPU, and on a
    # CPU only where its measured bf16 matmul peak beats float32's (jaxllm.kernels.choose)
    compute_dtype: str = "auto"
    # 'auto' | 'reference' (portable: what GPUs and TPUs run) | 'xla_cpu' (one CPU device); see jaxllm.kernels
    kernels: str = "auto"
    remat: str = "none"  # 'none' | 'full' | 'save_matmuls' | 'save_attention' (see jaxllm.model.REMAT_POLICIES)
    scan_layers: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.family == "llama":
            return 64 * math.ceil(8 * self.n_embd / 3 / 64)
        return 4 * self.n_embd


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[str, ...] = ("stdlib",)  # see jaxllm.data.sources for the forms
    # 'bpe' (sentencepiece, byte fallback) | 'char' | 'hf' (an imported checkpoint's tokenizer.json: never trained)
    tokenizer: str = "bpe"
    val_fraction: float = 0.05  # share of documents held out, chosen by a hash of each document's id
    tokenizer_train_bytes: int = 12_000_000  # sample of the training split the tokenizer learns from
    cache_dir: str = "runs/.prepared"  # prepared data lives in cache_dir/<hash of these settings>
    clean: CleanConfig = field(default_factory=CleanConfig)
    # Where cleaning runs: 'local' (a process pool) | 'ray' (pip install -e '.[ray]'). Both give the same bytes, so
    # these three are not part of the cache key. ray_address '' starts a local cluster, else joins it ('auto').
    engine: str = "local"
    ray_address: str = ""
    workers: int = 0  # cleaning processes (local) or Ray actors; 0: every CPU of this machine or of the cluster
    # Near-dedup clusters: union-find in the driver up to this many verified pairs (16 B each), star rounds on the
    # engine beyond (the same clusters, so not part of the cache key either); 0: always on the engine.
    union_find_max_pairs: int = 100_000_000


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # 'adamw' | 'muon': Muon for the transformer-block matrices, AdamW (lr) for the rest
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1  # never applied to norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clipping; 0 disables
    muon_lr: float = 0.02  # Muon's peak learning rate (optim.name='muon'); same warmup and decay as lr
    muon_momentum: float = 0.95


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: all devices not used by the other axes
    fsdp: int = 1
    tensor: int = 1


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16  # sequences per step, over all devices and hosts
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 8
    checkpoint_every: int = 250
    checkpoint_minutes: float = 0.0  # also save when this much time passed since the last save (0: by steps only)
    keep_checkpoints: int = 2  # the latest ones kept
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: none)
    peak_tflops: float = 0.0  # per device, for MFU; 0 measures a bf16/f32 matmul at start
    sample_prompt: str = "def "
    sample_tokens: int = 80
    compile_only: bool = False
    init_from: str = ""  # starting parameters (fine-tuning): 'hf:DIR' (Hugging Face) or a run directory (latest)
    # A budget replaces steps and the model's size with a plan made on the machine found (jaxllm.train.budget):
    # wall time from process start to the final evaluation ('10m', '90s', '2h', '1h30m'), or training FLOPs.
    budget: str = ""
    budget_flops: float = 0.0
    law: str = ""  # the planner's L(N, D): a sweep's scaling.json; '' = the law fitted for this setup, if any


@dataclass(frozen=True)
class PosttrainConfig:
    stage: str = ""  # '' pretraining | 'sft' | 'dpo' | 'rl' (python -m jaxllm.sft, .dpo, .rl)
    # SFT data: 'stdlib' (embedded docstring tasks), 'tasks[:names|:FILE.jsonl]' (verifiable), JSONL paths or globs
    conversations: tuple[str, ...] = ("stdlib",)
    preferences: tuple[str, ...] = ("stdlib",)  # DPO pairs, same forms
    val_fraction: float = 0.15  # held out by module (stdlib: same hash as data.val_fraction) or by line (JSONL)
    seq_len: int = 128  # tokens per row, one conversation a row, right-padded; longer conversations are left out
    beta: float = 0.1  # DPO: how strongly the policy is held near the reference (the starting checkpoint)
    text_mix: float = 0.0  # SFT: the share of each batch (rows and loss) that is pretraining text, against forgetting
    own_mistakes: int = 0  # DPO: train problems of the task sources the start answers greedily; wrong replies: rejected
    nll_weight: float = 0.0  # DPO: weight of the chosen replies' negative log-likelihood added to the loss (RPO)
    # RL (GRPO, jaxllm.posttrain.rl): task sources, replies sampled per problem (train.batch_size / group_size
    # problems a sample), their temperature, the ratio's clip, the KL penalty's weight, optimizer steps per sample
    prompts: tuple[str, ...] = ("tasks",)
    group_size: int = 8
    temperature: float = 1.0
    clip_eps: float = 0.2
    kl_coef: float = 0.04
    updates_per_sample: int = 1
    # LoRA (jaxllm.train.lora) for any post-training stage: adapters of rank lora_rank on the lora_targets
    # projections of every block, the base frozen; 0 trains every parameter. The adapters are scaled by
    # lora_alpha / lora_rank. alpha stays fixed as the rank changes, as Hu et al. (2021) do: the scale then keeps the
    # update's size about the same, so a learning rate found at one rank serves the others; 16 gives scale 1 at
    # rank 16. The default targets are every projection both families have (adapting all of them comes closer to
    # full fine-tuning than q and v alone: Dettmers et al. 2023, QLoRA); Llama runs may add its 'gate'.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "up", "down")


LORA_TARGETS = ("q", "k", "v", "o", "up", "gate", "down")  # the blocks' projections (model.transformer.PROJECTIONS)


@dataclass(frozen=True)
class DistributedConfig:
    coordinator: str = ""  # HOST:PORT; empty: single process, or auto-detected on TPU VMs / SLURM
    num_processes: int = 1
    process_id: int = 0
    timeout_s: int = 300  # a process that waits this long on a peer ends with an error instead of hanging


@dataclass(frozen=True)
class Config:
    name: str = "base"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    posttrain: PosttrainConfig = field(default_factory=PosttrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


DURATION_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str, flag: str = "--train.budget") -> float:
    """'10m' -> 600.0, '1h30m' -> 5400.0, '90s' -> 90.0; raises ConfigError on anything else."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(min|s|m|h)", text.strip())
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(min|s|m|h)", "", text.strip()).strip():
        raise ConfigError(f"{flag}={text!r}: write a duration such as 10m, 90s, 2h or 1h30m")
    seconds = sum(float(n) * DURATION_UNITS[unit] for n, unit in parts)
    if seconds <= 0:
        raise ConfigError(f"{flag}={text!r}: the budget must be longer than 0 s")
    return seconds


def _rl_checks(pt: PosttrainConfig, t: TrainConfig) -> list[tuple[bool, str]]:
    if pt.stage != "rl":
        return []
    return [
        (
            bool(pt.prompts) and all(s == "tasks" or s.startswith("tasks:") for s in pt.prompts),
            f"posttrain.prompts={','.join(pt.prompts)}: RL rewards need verifiable tasks: 'tasks', 'tasks:add+sort' "
            "or 'tasks:FILE.jsonl'",
        ),
        (
            pt.group_size >= 2 and t.batch_size % pt.group_size == 0,
            f"posttrain.group_size={pt.group_size}: must be at least 2 and divide train.batch_size={t.batch_size}",
        ),
        (pt.temperature > 0, f"posttrain.temperature={pt.temperature}: RL samples; use a temperature above 0"),
        (0 < pt.clip_eps < 1, f"posttrain.clip_eps={pt.clip_eps}: must be in (0, 1), e.g. 0.2"),
        (pt.kl_coef >= 0, f"posttrain.kl_coef={pt.kl_coef}: must be 0 (no penalty) or positive"),
        (
            pt.updates_per_sample >= 1 and t.checkpoint_every % pt.updates_per_sample == 0,
            f"posttrain.updates_per_sample={pt.updates_per_sample}: must be at least 1 and divide "
            f"train.checkpoint_every={t.checkpoint_every}, so that a resumed run starts a sample",
        ),
    ]


def _lora_checks(cfg: Config) -> list[tuple[bool, str]]:
    pt = cfg.posttrain
    if pt.lora_rank == 0:  # full fine-tuning: the other LoRA settings are unused
        return []
    unknown = [t for t in pt.lora_targets if t not in LORA_TARGETS]
    return [
        (pt.lora_rank > 0, f"posttrain.lora_rank={pt.lora_rank}: use 0 (full fine-tuning) or a rank, e.g. 16"),
        (
            pt.stage != "",
            f"posttrain.lora_rank={pt.lora_rank} adapts a trained model: use it with python -m jaxllm.sft, "
            ".dpo or .rl, or set --posttrain.lora_rank=0",
        ),
        (pt.lora_alpha > 0, f"posttrain.lora_alpha={pt.lora_alpha}: must be positive, e.g. 16"),
        (
            bool(pt.lora_targets) and not unknown and len(set(pt.lora_targets)) == len(pt.lora_targets),
            f"posttrain.lora_targets={','.join(pt.lora_targets)}: name each once, from {', '.join(LORA_TARGETS)}",
        ),
        (
            "gate" not in pt.lora_targets or cfg.model.family == "llama",
            f"posttrain.lora_targets has 'gate', which model.family={cfg.model.family!r} lacks: drop it "
            "(q,k,v,o,up,down)",
        ),
        (
            cfg.optim.name == "adamw",
            f"optim.name={cfg.optim.name!r} orthogonalises whole block matrices; LoRA's adapters train with AdamW: "
            "set --optim.name=adamw",
        ),
    ]


def validate(cfg: Config) -> Config:
    """Checks that do not need devices or data; raises ConfigError naming the bad value and the fix."""
    m, t, o, pt = cfg.model, cfg.train, cfg.optim, cfg.posttrain
    checks = [
        (m.family in ("gpt2", "llama"), f"model.family={m.family!r}: use 'gpt2' or 'llama'"),
        (m.n_layer >= 1, f"model.n_layer={m.n_layer}: needs at least 1 layer"),
        (
            m.n_head >= 1 and m.n_embd % m.n_head == 0,
            f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}: pick a multiple",
        ),
        (
            m.kv_heads >= 1 and m.n_head % m.kv_heads == 0,
            f"model.n_head={m.n_head} is not a multiple of model.n_kv_head={m.n_kv_head}: pick a divisor of n_head",
        ),
        (m.family != "llama" or m.head_dim % 2 == 0, f"model.n_embd/n_head={m.head_dim}: RoPE needs an even head size"),
        (
            m.vocab_size >= 300 or cfg.data.tokenizer == "char",
            f"model.vocab_size={m.vocab_size}: a bpe tokenizer needs at least 300 (256 bytes + specials)",
        ),
        (m.block_size >= 2, f"model.block_size={m.block_size}: needs at least 2"),
        (
            m.compute_dtype in ("auto", "float32", "bfloat16"),
            f"model.compute_dtype={m.compute_dtype!r}: use auto, float32 or bfloat16",
        ),
        (m.kernels in ("auto", "reference", "xla_cpu"), f"model.kernels={m.kernels!r}: use auto, reference or xla_cpu"),
        (
            m.remat in ("none", "full", "save_matmuls", "save_attention"),
            f"model.remat={m.remat!r}: use none, full, save_matmuls or save_attention",
        ),
        (cfg.data.tokenizer in ("bpe", "char", "hf"), f"data.tokenizer={cfg.data.tokenizer!r}: use bpe or char"),
        (0 < cfg.data.val_fraction < 1, f"data.val_fraction={cfg.data.val_fraction}: must be between 0 and 1"),
        (cfg.data.engine in ("local", "ray"), f"data.engine={cfg.data.engine!r}: use local or ray"),
        (
            cfg.data.engine == "ray" or not cfg.data.ray_address,
            f"data.ray_address={cfg.data.ray_address!r} is for --data.engine=ray: add it or drop the address",
        ),
        (cfg.data.workers >= 0, f"data.workers={cfg.data.workers}: must be >= 0 (0: every CPU)"),
        (
            cfg.data.union_find_max_pairs >= 0,
            f"data.union_find_max_pairs={cfg.data.union_find_max_pairs}: must be >= 0 (0: always on the engine)",
        ),
        (len(cfg.data.sources) >= 1, "data.sources is empty: name at least one source, e.g. '[\"stdlib\"]'"),
        (pt.stage in ("", "sft", "dpo", "rl"), f"posttrain.stage={pt.stage!r}: use '' (pretraining), sft, dpo or rl"),
        (
            pt.stage == "" or (t.init_from != "" and not t.init_from.startswith("hf:")),
            f"posttrain.stage={pt.stage!r} needs train.init_from=RUN_DIR, the run it starts from (got "
            f"{t.init_from!r}); import a Hugging Face model first with python -m jaxllm.hf import",
        ),
        (
            pt.stage == "" or 2 <= pt.seq_len <= m.block_size,
            f"posttrain.seq_len={pt.seq_len}: must be in [2, model.block_size={m.block_size}]",
        ),
        (0 < pt.val_fraction < 1, f"posttrain.val_fraction={pt.val_fraction}: must be between 0 and 1"),
        (pt.beta > 0, f"posttrain.beta={pt.beta}: must be positive"),
        (pt.nll_weight >= 0, f"posttrain.nll_weight={pt.nll_weight}: must be 0 (plain DPO) or positive"),
        (0 <= pt.text_mix < 1, f"posttrain.text_mix={pt.text_mix}: must be in [0, 1)"),
        (pt.own_mistakes >= 0, f"posttrain.own_mistakes={pt.own_mistakes}: must be 0 (off) or a number of problems"),
        (
            pt.own_mistakes == 0 or (pt.stage == "dpo" and any(s.split(":")[0] == "tasks" for s in pt.preferences)),
            f"posttrain.own_mistakes={pt.own_mistakes} makes DPO pairs of verifiable tasks: use it with "
            "python -m jaxllm.dpo and a 'tasks' source in posttrain.preferences",
        ),
        (
            pt.text_mix == 0 or pt.stage == "sft",
            f"posttrain.text_mix={pt.text_mix} mixes pretraining text into SFT only: drop it for this stage",
        ),
        *_rl_checks(pt, t),
        *_lora_checks(cfg),
        (t.steps >= 1, f"train.steps={t.steps}: must be at least 1"),
        (t.batch_size >= 1, f"train.batch_size={t.batch_size}: must be at least 1"),
        (
            t.log_every >= 1 and t.eval_every >= 1 and t.checkpoint_every >= 1,
            "train.log_every, eval_every and checkpoint_every must be at least 1",
        ),
        (t.eval_batches >= 1, f"train.eval_batches={t.eval_batches}: must be at least 1"),
        (t.keep_checkpoints >= 1, f"train.keep_checkpoints={t.keep_checkpoints}: must be at least 1"),
        (
            t.checkpoint_minutes >= 0 and t.keep_every >= 0,
            f"train.checkpoint_minutes={t.checkpoint_minutes}, train.keep_every={t.keep_every}: must be >= 0 "
            "(0 turns each off)",
        ),
        (o.name in ("adamw", "muon"), f"optim.name={o.name!r}: use adamw or muon"),
        (o.lr > 0 and o.muon_lr > 0, f"optim.lr={o.lr}, optim.muon_lr={o.muon_lr}: must be positive"),
        (0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio}: must be in [0, 1]"),
        (0 <= o.warmup_steps, f"optim.warmup_steps={o.warmup_steps}: must be >= 0"),
        (
            sum(1 for a in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) if a == -1) <= 1,
            "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1",
        ),
        (
            all(a == -1 or a >= 1 for a in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)),
            "mesh.data, mesh.fsdp and mesh.tensor must each be a positive size or -1",
        ),
    ]
    checks.append(
        (
            not (t.budget and t.budget_flops),
            f"--train.budget={t.budget} and --train.budget_flops={t.budget_flops:g}: give one budget, not both",
        )
    )
    checks.append((t.budget_flops >= 0, f"train.budget_flops={t.budget_flops:g}: must be positive (0: no budget)"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if t.budget:
        parse_duration(t.budget)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Experiments and overrides


def load_experiment(name_or_path: str) -> Config:
    """`base` loads experiments/base.py; a path ending in .py loads that file. The file defines config()."""
    if name_or_path.endswith(".py") or "/" in name_or_path:
        path = pathlib.Path(name_or_path)
    else:
        path = EXPERIMENTS_DIR / f"{name_or_path}.py"
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))
        raise ConfigError(f"unknown experiment {name_or_path!r}: use one of {', '.join(known)} or a path to a .py file")
    spec = importlib.util.spec_from_file_location(f"jaxllm_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error in the experiment file: {e.msg}") from None
    except ConfigError:
        raise
    except Exception as e:  # an experiment is user code: any failure to load it is a bad input, not a crash
        raise ConfigError(f"{path}: the experiment file failed to load: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "config", None)):
        raise ConfigError(f"{path} defines no config() function returning a jaxllm Config")
    try:
        cfg = module.config()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{path}: config() failed: {type(e).__name__}: {e}") from None
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: config() returned {type(cfg).__name__}, expected jaxllm.config.Config")
    return cfg


def _parse_value(raw: str, typ, key: str):
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            value = float(raw)  # accepts 1e6 for integer fields, refuses 2.5
            if not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
        if origin is tuple:
            items = json.loads(raw) if raw.strip().startswith("[") else [s for s in raw.split(",") if s]
            if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
                raise ValueError
            return tuple(items)
    except (ValueError, json.JSONDecodeError):
        pass
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        typ, "a JSON list of strings, e.g. '[\"stdlib\"]'"
    )
    raise ConfigError(f"--{key}={raw!r}: expected {expected}")


def _set_path(obj, parts: list[str], raw: str, full_key: str):
    hints = typing.get_type_hints(type(obj))
    name = parts[0]
    if name not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(obj))
        raise ConfigError(f"unknown config key --{full_key}: {type(obj).__name__} has {known}")
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(parts) == 1:
            raise ConfigError(f"--{full_key} is a section: set one of its fields, e.g. --{full_key}.<field>=value")
        return dataclasses.replace(obj, **{name: _set_path(current, parts[1:], raw, full_key)})
    if len(parts) > 1:
        raise ConfigError(f"unknown config key --{full_key}: {'.'.join(parts[:1])} is not a section")
    return dataclasses.replace(obj, **{name: _parse_value(raw, hints[name], full_key)})


def apply_overrides(cfg: Config, overrides: dict[str, str]) -> Config:
    for key, raw in overrides.items():
        cfg = _set_path(cfg, key.split("."), raw, key)
    return cfg


def config_from_dict(data: dict, cls=Config):
    """Inverse of Config.to_dict (used to read a run's saved config)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        typ, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(typ):
            value = config_from_dict(value, typ)
        elif typing.get_origin(typ) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def diff(a, b, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two configs of the same class."""
    out = []
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(va):
            out += diff(va, vb, key + ".")
        elif va != vb:
            out.append(key)
    return out


def parse_cli(
    argv: list[str], *, allowed_flags: typing.Iterable[str] = (), switches: typing.Iterable[str] = ()
) -> tuple[Config, dict[str, str]]:
    """Splits `--experiment=X`, `--section.key=value` overrides and the command's own flags.

    Returns the resolved, validated Config and a dict of the command's own flags (those in allowed_flags, and the
    switches: flags that may stand bare, meaning 'true').
    """
    switches = set(switches)
    allowed = set(allowed_flags) | switches | {"experiment"}
    flags: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: options look like --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if key in switches:
                value = "true"  # a bare switch
            else:
                raise ConfigError(f"--{key} needs a value: write --{key}=VALUE")
        if "." in key:
            overrides[key] = value
        elif key in allowed:
            flags[key] = value
        else:
            raise ConfigError(
                f"unknown option --{key}: use --experiment=NAME, --section.key=value"
                + (
                    f" or one of {', '.join('--' + a for a in sorted(allowed - {'experiment'}))}"
                    if allowed - {"experiment"}
                    else ""
                )
            )
    cfg = load_experiment(flags.get("experiment", "base"))
    cfg = apply_overrides(cfg, overrides)
    return validate(cfg), flags


def replace(cfg, **changes):
    """dataclasses.replace, re-exported so experiments need only this module."""
    return dataclasses.replace(cfg, **changes)
