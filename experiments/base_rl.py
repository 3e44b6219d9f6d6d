"""base_rl: GRPO from the DPO run (runs/base_dpo), also the frozen reference, on the embedded verifiable tasks:
16 problems x 8 replies sampled at temperature 0.7 a step, reward 1 where the task's checker accepts a reply.

From base_dpo on a 10-minute base (2-core AMD EPYC, Zen 4), 600 steps (5 minutes): held-out greedy pass@1 0.52 ->
0.51 (200 problems a task; reverse and sort held at 0.92 and 0.96, python 0.34 -> 0.28), while sampled pass@4 on
count fell from 0.82 to 0.64 (the policy sharpened on '1'). At lr 2e-4 from a weaker SFT, pass@1 on 192 problems
dipped from 0.38 to 0.26 in 100 steps and recovered to 0.39 by step 600; at lr 1e-4, keeping only groups whose
rewards differ (4x oversampled), it stayed at 0.37-0.38 for 300 steps."""

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
