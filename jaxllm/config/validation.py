"""Checks of a Config that need no devices or data, and the duration parser the budget flags share.

Each failed check raises ConfigError with a one-line message naming the bad value and the fix.
"""

from __future__ import annotations

import re

from jaxllm.config.schema import LORA_TARGETS, Config, ConfigError, PosttrainConfig, TrainConfig

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
