"""scaling: the IsoFLOP sweep behind base's budget planner, `python -m jaxllm.scaling`.

This is experiments/base.py with the budget off: the sweep sets the shape (n_layer, and n_head heads of base's head
size, 16) and train.steps of each run from its FLOP budget, and caps warmup at a tenth of its steps, exactly as the
planner does for a budgeted base run, so the fitted L(N, D) predicts base's held-out loss.

Why base's settings (pilot runs on a 2-core CPU, 2026-11): with a 512-token vocabulary and 128-token context the
smallest model (2 layers, width 16; one-layer models are left out, see jaxllm.scaling.laws.MIN_LAYERS) has 17K
parameters, so budgets from 2e11 FLOPs span the optimum; with an 8,192-token vocabulary the embedding alone
outweighed the compute-optimal size of every CPU budget. The pilots below predate MIN_LAYERS. At the 5e11
budget, 1 layer x 48 (1,248 steps) reached val loss 3.480 / 3.239 / 3.164 / 3.146 at lr 1e-3 / 3e-3 / 1e-2 / 2e-2;
1 x 80 (584 steps) 3.322 / 3.300 at 3e-3 / 1e-2; 4 x 64 (273 steps) 3.661 / 3.660: one lr of 1e-2 is near the
best for every size (Hoffmann et al. also keep one schedule per sweep).
"""

from jaxllm.config import Config, load_experiment, replace


def config() -> Config:
    base = load_experiment("base")
    return replace(base, name="scaling", train=replace(base.train, budget="", sample_tokens=16))
