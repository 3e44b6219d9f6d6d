"""base_rl: GRPO from the SFT run (runs/base_sft), also the frozen reference, on the embedded verifiable tasks:
8 problems x 8 sampled replies a step, reward 1 where the task's checker accepts a reply."""

from jaxllm.config import OptimConfig, PosttrainConfig, TrainConfig, load_experiment, replace


def config():
    return replace(
        load_experiment("base"),
        name="base_rl",
        optim=OptimConfig(lr=1e-4, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.0),
        train=TrainConfig(
            steps=200,
            batch_size=64,
            log_every=10,
            eval_every=50,
            checkpoint_every=50,
            eval_batches=4,
            sample_tokens=40,
            init_from="runs/base_sft",
        ),
        posttrain=PosttrainConfig(stage="rl", prompts=("tasks",), seq_len=64, group_size=8),
    )
