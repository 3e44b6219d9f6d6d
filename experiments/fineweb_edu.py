"""fineweb_edu: pretraining data at web scale, FineWeb-Edu (HuggingFaceFW/fineweb-edu: educational web pages that
its authors extracted from Common Crawl and filtered), the corpus `--data.engine=ray` is for.

Data: the dataset's Parquet files on this machine's disk, never downloaded at run time. Its 10B-token sample (about
28 GB, in its own layout under data/fineweb-edu):
  huggingface-cli download HuggingFaceFW/fineweb-edu --repo-type dataset --include "sample/10BT/*" \\
      --local-dir data/fineweb-edu
then
  python -m jaxllm.data --experiment=fineweb_edu                                  # the local process pool
  python -m jaxllm.data --experiment=fineweb_edu --data.engine=ray                # a local Ray cluster
  python -m jaxllm.data --experiment=fineweb_edu --data.engine=ray --data.ray_address=auto   # the `ray start` one
A copy elsewhere: --data.sources='["parquet:PATH/*.parquet:text"]'.

jaxllm's own cleaning runs over it again with its defaults (language id, the Gopher, C4 and FineWeb rules, PII,
exact and near dedup), so the report says what it would still drop. The model is GPT-2 small's size in Llama layers
(12 x 768, context 1024) with a 32K BPE vocabulary, which wants a larger sample of text to learn from than base's
512 pieces; it is meant for GPUs and TPUs, and a CPU can prepare the data.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
    return Config(
        name="fineweb_edu",
        model=ModelConfig(
            family="llama", vocab_size=32768, block_size=1024, n_layer=12, n_head=12, n_embd=768, tie_embeddings=False
        ),
        data=DataConfig(
            sources=("parquet:data/fineweb-edu/sample/10BT/*.parquet:text",),
            val_fraction=0.005,
            tokenizer_train_bytes=200_000_000,
        ),
        optim=OptimConfig(lr=6e-4, warmup_steps=700, min_lr_ratio=0.1, weight_decay=0.1),
        train=TrainConfig(
            steps=20000,
            batch_size=64,
            log_every=50,
            eval_every=1000,
            eval_batches=32,
            checkpoint_every=1000,
        ),
    )
