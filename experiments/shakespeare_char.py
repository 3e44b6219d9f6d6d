"""shakespeare_char: a character-level model on Tiny Shakespeare, the time-to-quality speedrun.

Reference: nanoGPT's CPU "baby GPT" (4 layers, 4 heads, width 128, context 64, batch 12, 2,000 iterations) reaches
validation loss 1.886 in 64-66 s on this machine. Goal: <= 1.88 in at most half that, process start to the
evaluation that reaches it: `python -m jaxllm.bench speedrun --data=PATH` times it.

Data: one text file (pass your copy: --data.sources='["file:PATH"]'); the last 10% of its characters is the
validation split, as in nanoGPT. The default path is the development copy next to this checkout.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from jaxllm.data.pipeline_config import CleanConfig


def config() -> Config:
    return Config(
        name="shakespeare_char",
        # 65 characters + 8 special tokens
        # nanoGPT's baby GPT shape; float32 (bfloat16 was slower at width 128 here), remat of everything but the
        # matmul outputs (its backward ran faster than keeping every residual on this CPU)
        model=ModelConfig(family="gpt2", vocab_size=73, block_size=64, n_layer=4, n_head=4, n_embd=128,
                          compute_dtype="float32", remat="save_matmuls"),
        data=DataConfig(sources=("file:../shared/data/tinyshakespeare.txt",), tokenizer="char", val_fraction=0.1,
                        clean=CleanConfig(enabled=False)),  # literary text: web-quality filters do not apply
        # measured here: lr 3e-3 over 1,000 steps reached 1.866 at step 800; 6e-3 over 600 steps only 1.900
        optim=OptimConfig(lr=3e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1, beta2=0.99),
        train=TrainConfig(steps=800, batch_size=32, log_every=50, eval_every=100, eval_batches=4,
                          checkpoint_every=100000, sample_prompt="ROMEO:", sample_tokens=200),
    )
