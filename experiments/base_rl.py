"""base_rl: GRPO from the DPO run (runs/base_dpo), also the frozen reference, on the embedded verifiable tasks:
16 problems x 8 replies sampled at temperature 0.7 a step, reward 1 where the task's checker accepts a reply.

From SFT on a 10-minute base (2-core AMD EPYC, Zen 3), 600 steps (5 minutes) raised the train reward from 0.23 to
0.28 and held-out greedy pass@1 on 192 problems from 0.30 to 0.32, after a dip to 0.24 at step 100; lr 5e-4 with
8 problems a step, or lr 3e-4 at temperature 1, left pass@1 lower after 200-300 steps."""

from jaxllm.config import OptimConfig, PosttrainConfig, TrainConfig, load_experiment, replace


def config():
    return replace(
        load_experiment("base"),
        name="base_rl",
        optim=OptimConfig(lr=1e-4, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.0),
        train=TrainConfig(
            steps=600,
            batch_size=128,
            log_every=10,
            eval_every=100,
            checkpoint_every=100,
            eval_batches=4,
            sample_tokens=40,
            init_from="runs/base_dpo",
        ),
        posttrain=PosttrainConfig(
            stage="rl", prompts=("tasks",), seq_len=48, group_size=8, temperature=0.7, kl_coef=0.01
        ),
    )
