"""shakespeare_char: a character-level model on Tiny Shakespeare, the time-to-quality speedrun.

Reference: nanoGPT's CPU "baby GPT" (4 layers, 4 heads, width 128, context 64, batch 12, 2,000 iterations) reaches
validation loss 1.886. Goal: <= 1.88 in at most half its time on the same machine, process start to the
evaluation that reaches it: `python -m jaxllm.bench speedrun --data=PATH` times it.

Data: one text file (pass your copy: --data.sources='["file:PATH"]'); the last 10% of its characters is the
validation split, as in nanoGPT. The default path is the development copy next to this checkout.

What got it there (validation loss on 64 x 16 windows of the split, at the same step count):
- Muon for the block matrices: 1.94 after 400 steps where AdamW at its best learning rate had 2.14.
- Two layers instead of four: half the time per step, and at this budget the deeper model loses.
- Llama layers (RoPE, SwiGLU, RMSNorm, untied head): 1.85 against 1.89 for GPT-2 layers at step 400 of 500.
- Batch 16 of 64: more updates per token for the same time.
- The compute dtype is the machine's ('auto': bf16 where the CPU's bf16 matmuls are faster).
The context stays nanoGPT's 64, so the validation loss is the same quantity as the reference's.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from jaxllm.config.clean import CleanConfig


def config() -> Config:
    return Config(
        name="shakespeare_char",
        # 65 characters + 8 special tokens; remat keeping only the attention's output
        model=ModelConfig(
            family="llama",
            vocab_size=73,
            block_size=64,
            n_layer=2,
            n_head=4,
            n_embd=128,
            tie_embeddings=False,
            remat="save_attention",
        ),
        data=DataConfig(
            sources=("file:../shared/data/tinyshakespeare.txt",),
            tokenizer="char",
            val_fraction=0.1,
            clean=CleanConfig(enabled=False),
        ),  # literary text: web-quality filters do not apply
        optim=OptimConfig(
            name="muon", muon_lr=0.03, lr=6e-3, warmup_steps=20, min_lr_ratio=0.1, weight_decay=0.1, beta2=0.99
        ),
        train=TrainConfig(
            steps=400,
            batch_size=16,
            log_every=50,
            eval_every=100,
            eval_batches=64,
            checkpoint_every=100000,
            sample_prompt="ROMEO:",
            sample_tokens=200,
        ),
    )
