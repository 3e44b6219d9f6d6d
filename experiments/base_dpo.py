"""base_dpo: DPO from the SFT run (runs/base_sft), which is also the frozen reference, on the embedded stdlib
preference pairs."""

from jaxllm.config import OptimConfig, PosttrainConfig, TrainConfig, load_experiment, replace


def config():
    return replace(
        load_experiment("base"),
        name="base_dpo",
        # lr 2e-4 gave repetitive replies and no better held-out reward accuracy
        optim=OptimConfig(lr=5e-5, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.0),
        train=TrainConfig(
            steps=100,
            batch_size=8,
            log_every=10,
            eval_every=50,
            checkpoint_every=50,
            eval_batches=8,
            sample_tokens=40,
            init_from="runs/base_sft",
        ),
        posttrain=PosttrainConfig(stage="dpo", seq_len=128, beta=0.1),
    )
