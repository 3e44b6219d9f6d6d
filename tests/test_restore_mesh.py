"""A checkpoint written on one mesh layout restores onto others (and onto one device), resharding on load, with
equal parameters and equal next losses. The multi-device half runs as a worker subprocess with 8 CPU devices."""

from __future__ import annotations

import json
import sys

from tests.multidevice import run_worker
from tests.test_sharding import BATCH, BLOCK, VOCAB, tiny

SAVED_ON = (2, 2, 2)
RESTORED_ON = [(1, 8, 1), (1, 1, 4), (1, 1, 1)]


def worker(directory: str) -> dict:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from jaxllm import sharding
    from jaxllm.train import checkpoint
    from jaxllm.train import step as step_lib

    tokens = np.random.default_rng(0).integers(0, VOCAB, (4, BATCH, BLOCK + 1)).astype(np.int32)

    def run_steps(shape, state, steps):
        cfg = tiny(shape)
        mesh = sharding.make_mesh(cfg, jax.devices()[: int(np.prod(shape))])
        trainer, abstract_state = step_lib.make_trainer(cfg, mesh)
        with jax.set_mesh(mesh):
            state = step_lib.init_state(cfg, trainer) if state is None else state(abstract_state)
            start_params = jax.device_get(state["params"])
            train_step = trainer.jit_train_step()
            losses = []
            for s in steps:
                batch = sharding.global_batch({"inputs": tokens[s, :, :-1], "targets": tokens[s, :, 1:]}, mesh, BATCH)
                if s == 2 and shape == SAVED_ON:  # the checkpoint: written after two steps, on this layout
                    mngr.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
                    mngr.wait_until_finished()
                    saved_params.update(jax.device_get(state["params"]))
                state, metrics = train_step(state, batch)
                losses.append(float(metrics["loss"]))
        return start_params, losses

    mngr = checkpoint.manager(directory)
    saved_params = {}
    _, losses = run_steps(SAVED_ON, None, range(4))
    results = {"continued": losses[2:]}
    for shape in RESTORED_ON:
        params, losses = run_steps(shape, lambda abstract: checkpoint.restore_state(mngr, 2, abstract), range(2, 4))
        equal = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved_params)))
        results[str(shape)] = {"params_equal": equal, "losses": losses}
    mngr.close()
    return results


def test_restore_onto_other_meshes(tmp_path):
    results = run_worker(__file__, str(tmp_path))
    for shape in RESTORED_ON:
        got = results[str(shape)]
        assert got["params_equal"], shape
        rel = max(abs(a - b) / abs(b) for a, b in zip(got["losses"], results["continued"]))
        print(f"restored on {shape}: next losses {got['losses']} vs {results['continued']}, relative {rel:.1e}")
        assert rel <= 1e-5, (shape, got["losses"], results["continued"])


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1])))
