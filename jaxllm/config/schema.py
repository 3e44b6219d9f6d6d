"""The configuration's sections, one typed, frozen dataclass each, the Config that holds them, and ConfigError.

Fields, defaults, their meanings and the values derived from them; not the checks (validation.py) nor the reading of
experiments and overrides (load.py). Of jaxllm.config it imports only the cleaning section (clean.py), so the
other modules import it without a cycle.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from jaxllm.config.clean import CleanConfig


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
