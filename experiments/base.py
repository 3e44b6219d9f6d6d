"""base: a small GPT-2-style model on the embedded corpus (the Python stdlib).

350 steps of 16 x 256 tokens: about 8 minutes on an idle 2-core CPU, data preparation and compilation included.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
    return Config(
        name="base",
        model=ModelConfig(family="gpt2", vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256),
        data=DataConfig(sources=("stdlib",)),
        optim=OptimConfig(lr=3e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1),
        train=TrainConfig(steps=350, batch_size=16, log_every=10, eval_every=100, checkpoint_every=100),
    )
