"""base: a small GPT-2-style model on the embedded corpus (the Python stdlib), the README's first command.

700 steps of 16 x 256 tokens; the kernels and compute dtype are chosen for the machine found (model.kernels and
model.compute_dtype 'auto'); remat keeps only the attention's output, so the projections are recomputed in the
backward pass rather than stored.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
    return Config(
        name="base",
        model=ModelConfig(
            family="gpt2", vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256, remat="save_attention"
        ),
        data=DataConfig(sources=("stdlib",)),
        optim=OptimConfig(lr=3e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1),
        train=TrainConfig(steps=700, batch_size=16, log_every=10, eval_every=100, checkpoint_every=100),
    )
