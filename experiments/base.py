"""base: a GPT-2-style model on the embedded corpus (the Python stdlib), the README's first command.

A budget, not a size: `train.budget` (10 minutes of this machine, process start to the final evaluation) is spent
on the model shape and step count that the planner (jaxllm.train.budget) predicts to reach the lowest held-out loss
here, by the scaling law fitted for exactly this setup (`python -m jaxllm.scaling`, experiments/scaling.py, which
is this file with the shape left to the sweep). `--train.budget=30m`, `--train.budget_flops=1e14`, or
`--train.budget= --train.steps=N` for a fixed run of the shape below.

Why this setup: a 512-token BPE vocabulary (1.86 bytes a token on the stdlib) and 128-token context keep the
embeddings small enough that the compute-optimal model of a CPU's 10 minutes (a few hundred thousand parameters)
is mostly transformer, and one learning rate (1e-2) was near the best for every size of the sweep's pilots (see
experiments/scaling.py). The kernels and compute dtype are chosen for the machine found.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
    return Config(
        name="base",
        model=ModelConfig(family="gpt2", vocab_size=512, block_size=128, n_layer=4, n_head=8, n_embd=128),
        data=DataConfig(sources=("stdlib",)),
        optim=OptimConfig(lr=1e-2, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1),
        train=TrainConfig(
            budget="10m",
            steps=2000,
            batch_size=8,
            log_every=50,
            eval_every=1000,
            eval_batches=32,
            checkpoint_every=1000,
        ),
    )
