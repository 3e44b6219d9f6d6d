"""scaling: the model family of the default IsoFLOP sweep, `python -m jaxllm.scaling`, sized for a 2-core CPU.

The sweep keeps everything here but the shape (n_layer, n_head, n_embd at this head size, 16) and train.steps,
which it sets per run from the budget. Why these settings (pilot runs on the shared 2-core machine):
- vocab 512 (BPE, 1.86 bytes/token on the stdlib), context 128, 8 sequences a step: the smallest model (1 layer,
  width 16) has 14K parameters, so budgets of 2e11-2e12 FLOPs span the optimum, and every model of the grid gets
  130-9,000 steps. With base (8,192 tokens, 16 x 256 a step) a 2e12 budget gave 31-134 steps and the smallest
  model won: no minimum.
- lr 1e-2: at the 5e11 budget, 1 layer x 48 (1,248 steps) reached val loss 3.480 / 3.239 / 3.164 / 3.146 at lr
  1e-3 / 3e-3 / 1e-2 / 2e-2; 1 x 80 (584 steps) 3.322 / 3.300 at 3e-3 / 1e-2; 4 x 64 (273 steps) 3.661 / 3.660.
  One fixed lr for all sizes is Hoffmann et al.'s simplification; 1e-2 is near the best for every size tried,
  where 3e-3 would handicap the small models and push the optimum up.
- eval_batches 32 (32K held-out tokens, the same for every run): neighbouring grid points differ by a few
  hundredths of a nat near the optimum.
The default sweep (budgets 2e11, 5e11, 1e12, 2e12) found its minima at 30K, 53K, 66K and 71K parameters: N_opt ∝
C^0.38 and D_opt ∝ C^0.63 with N counting embeddings, N_opt ∝ C^0.53 with N the non-embedding parameters.
"""

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
    return Config(
        name="scaling",
        model=ModelConfig(family="gpt2", vocab_size=512, block_size=128, n_layer=2, n_head=4, n_embd=64),
        data=DataConfig(sources=("stdlib",)),
        # warmup: the sweep caps it at a tenth of each run's steps
        optim=OptimConfig(lr=1e-2, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1),
        train=TrainConfig(
            steps=1000,
            batch_size=8,
            log_every=50,
            eval_every=1000,
            eval_batches=32,
            checkpoint_every=1000,
            sample_tokens=16,
        ),
    )
