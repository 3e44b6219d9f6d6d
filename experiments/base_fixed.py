"""base_fixed: base as it was before budgets (700 steps of a 4 x 256 model, 8,192-token vocabulary), kept as the
baseline that `python -m jaxllm.bench budget` sets a budgeted base run against on the same machine.

16 x 256 tokens a step; remat keeps only the attention's output. Its wall time depends on the machine (about 10 to
12 minutes on a 2-core AVX-512 BF16 CPU, far longer on an AVX2 one): that is what a budget fixes.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
    return Config(
        name="base_fixed",
        model=ModelConfig(
            family="gpt2", vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256, remat="save_attention"
        ),
        data=DataConfig(sources=("stdlib",)),
        optim=OptimConfig(lr=3e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1),
        train=TrainConfig(steps=700, batch_size=16, log_every=10, eval_every=100, checkpoint_every=100),
    )
