"""base: a small GPT-2-style model on the embedded corpus (the Python stdlib).

700 steps of 16 x 256 tokens, bf16 matmuls, remat keeping only the attention's output (save_attention: in bf16
recomputing the projections is cheaper here than storing them; a step took 367-373 ms against 395-422 ms with
save_matmuls). Measured on an idle 2-core CPU, data preparation and compilation included: 350 steps in float32 took
6.5 minutes to val_bpb 1.890, 350 steps in bf16 3.2 minutes to 1.898, and these 700 steps 6.3 minutes to 1.673;
5.4 minutes (9,601 tokens/s) once commands ran on transparent huge pages (see jaxllm/__init__.py), and 5.1
minutes (10,002 tokens/s, val_bpb 1.669) with save_attention.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
    return Config(
        name="base",
        model=ModelConfig(family="gpt2", vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256,
                          compute_dtype="bfloat16", remat="save_attention"),
        data=DataConfig(sources=("stdlib",)),
        optim=OptimConfig(lr=3e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1),
        train=TrainConfig(steps=700, batch_size=16, log_every=10, eval_every=100, checkpoint_every=100),
    )
