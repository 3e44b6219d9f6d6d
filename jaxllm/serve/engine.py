"""Continuous batching: one decoding batch of `slots` rows over a preallocated KV cache, which requests join and
leave between steps.

A request takes a free slot: its prompt is prefilled into that slot's cache row (alone, padded to a length bucket),
and from the next step the slot decodes with every other busy one, one token a step, each row writing its keys at
its own position (a token's cache column is its position, so rows of any lengths share the batch). A finished or
cancelled request frees its slot at once; waiting requests are prefilled between decoding steps, up to a token
budget a step, so that arrivals never stall the streams already running for long. Every shape is compiled when
the engine warms up: the decoding step for `slots` rows and the prefill of each length bucket.

Each row samples with its own settings and key; a token's key is the request's seed folded with its input's
position, so a reply does not depend on which other requests shared its steps.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import traceback
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.config import ModelConfig
from jaxllm.inference.cache import init_cache, jit_decode_weights
from jaxllm.inference.generate import sample_rows


class QueueFull(Exception):
    """More requests waiting than the engine's queue holds."""


@dataclasses.dataclass(eq=False)
class Request:
    """One completion. The engine calls on_token(token) from its thread for every sampled token but a stop id (a
    False return ends the reply: a stop string was reached), then on_finish(reason) once: 'stop', 'length',
    'cancelled' or 'error'."""

    prompt: list[int]
    max_tokens: int
    on_token: Callable[[int], bool]
    on_finish: Callable[[str], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()
    cancelled: bool = False  # set from any thread (the client went away); the engine frees the slot at its next step
    generated: int = 0


def prefill_buckets(block_size: int) -> tuple[int, ...]:
    """Prompt lengths the prefill compiles for: powers of two from 16, and the whole context."""
    buckets, n = [], 16
    while n < block_size:
        buckets.append(n)
        n *= 2
    return (*buckets, block_size)


def _slot_rows(a: jax.Array, slots: int) -> int:
    """Leading rows a slot owns in a cache array: 1, or KV for a kernel set that keeps B*KV rows."""
    return a.shape[0] // slots


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_state(cfg: ModelConfig, slots: int) -> dict:
    """Every slot empty (uncommitted arrays: Engine._empty_state commits them where the steps' outputs live)."""
    return {
        "cache": init_cache(cfg, slots, cfg.block_size),
        "token": jnp.zeros(slots, jnp.int32),
        "position": jnp.zeros(slots, jnp.int32),
        "key": jnp.zeros((slots, 2), jnp.uint32),
        "temperature": jnp.zeros(slots, jnp.float32),
        "top_p": jnp.ones(slots, jnp.float32),
    }


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _prefill(graphdef, params, state, tokens, length, slot, key_data, temperature, top_p):
    """Prompt tokens (1,T) (`length` of them real, the rest padding) written into slot `slot`'s cache row from
    column 0, after emptying the row; the slot's settings set; -> the new state and the first sampled token."""
    slots = state["token"].shape[0]
    row = lambda a: jax.lax.dynamic_slice_in_dim(a, slot * _slot_rows(a, slots), _slot_rows(a, slots), 0)
    cache = tuple(
        {**{n: row(a) for n, a in layer.items()}, "pos": jnp.full_like(row(layer["pos"]), -1)}
        for layer in state["cache"]
    )
    columns = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    positions = jnp.where(columns < length, columns, -1)[None]  # padding: position -1, never attended to
    logits, cache = nnx.merge(graphdef, params)(tokens, positions, cache, jnp.int32(0))
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), length - 1)
    last = jax.lax.dynamic_index_in_dim(logits[0], length - 1, axis=0)  # (1,V)
    first = sample_rows(last, key[None], temperature[None], top_p[None])[0]
    put = lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part, slot * _slot_rows(full, slots), 0)
    return {
        "cache": tuple({n: put(full[n], part[n]) for n in full} for full, part in zip(state["cache"], cache)),
        "token": state["token"].at[slot].set(first),
        "position": state["position"].at[slot].set(length),
        "key": state["key"].at[slot].set(key_data),
        "temperature": state["temperature"].at[slot].set(temperature),
        "top_p": state["top_p"].at[slot].set(top_p),
    }, first


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(3,))
def _decode(graphdef, params, weights, state):
    """One step of every slot: each row's newest token at its position -> the next token of every row (B,). Free
    slots compute too (their rows are emptied when a request takes them); positions stop at the context's end."""
    position = state["position"]
    logits, cache = nnx.merge(graphdef, params)(
        state["token"][:, None], position[:, None], state["cache"], position, weights
    )
    keys = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(state["key"]), position)
    token = sample_rows(logits[:, -1], keys, state["temperature"], state["top_p"])
    last = state["cache"][0]["pos"].shape[1] - 1
    return {**state, "cache": cache, "token": token, "position": jnp.minimum(position + 1, last)}, token


class Engine:
    """The serving loop, on a thread of its own: submit() from any thread; callbacks come from the engine's."""

    def __init__(self, graphdef: nnx.GraphDef, params: dict, cfg: ModelConfig, slots: int, max_queue: int):
        self.graphdef, self.params, self.cfg = graphdef, params, cfg
        self.slots, self.max_queue = slots, max_queue
        self.buckets = prefill_buckets(cfg.block_size)
        self.weights = jit_decode_weights(params, cfg, slots)
        self._state = self._empty_state()
        self._running: list[Request | None] = [None] * slots
        self._queue: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._ready, self._failed = threading.Event(), None
        self._thread = threading.Thread(target=self._run, name="jaxllm-engine", daemon=True)

    def _empty_state(self) -> dict:
        """Every slot empty, committed to the parameters' device as every step's output is: a step compiled for
        committed arguments would compile again for uncommitted ones."""
        device = next(iter(jax.tree.leaves(self.params)[0].devices()))
        return jax.device_put(_init_state(self.cfg, self.slots), device)

    def _run(self) -> None:
        try:
            self._warm()
        except Exception as e:  # passed to start(), which raises it on the caller's thread
            self._failed = e
            return
        finally:
            self._ready.set()
        self._loop()

    def _warm(self) -> None:
        """Compiles every shape the loop runs (each prefill bucket, the decoding step), then empties the slots. On
        the engine's thread: a compiled function's cache is looked up with the calling thread's settings."""
        for bucket in self.buckets:
            self._prefill_slot(0, Request([0] * min(bucket, self.cfg.block_size - 1), 1, bool, bool))
        self._state, token = _decode(self.graphdef, self.params, self.weights, self._state)
        token.block_until_ready()
        self._state = self._empty_state()

    def start(self) -> None:
        """Compiles every shape, on the engine's thread, and starts serving there; returns once it serves."""
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()

    def submit(self, request: Request) -> None:
        """Queues a request; raises QueueFull when max_queue are waiting, ValueError when it cannot fit."""
        if not 0 < len(request.prompt) < self.cfg.block_size:
            raise ValueError(f"a prompt of {len(request.prompt)} tokens: need 1 to {self.cfg.block_size - 1}")
        if not 0 < request.max_tokens <= self.cfg.block_size - len(request.prompt):
            raise ValueError(
                f"max_tokens={request.max_tokens} with a prompt of {len(request.prompt)} tokens: the context holds "
                f"{self.cfg.block_size}"
            )
        with self._cv:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting for a slot")
            self._queue.append(request)
            self._cv.notify_all()

    def cancel(self, request: Request) -> None:
        with self._cv:
            request.cancelled = True
            self._cv.notify_all()

    def stats(self) -> dict:
        with self._cv:
            return {"slots": self.slots, "busy": sum(r is not None for r in self._running), "queued": len(self._queue)}

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _admit(self) -> list[tuple[int, Request]]:
        """Waiting requests into free slots, up to a prefill budget of one context's tokens (at least one request);
        cancelled ones are dropped. Called under the lock."""
        admitted, budget = [], self.cfg.block_size
        while self._queue and None in self._running:
            request = self._queue[0]
            if request.cancelled:
                self._queue.popleft()
                request.on_finish("cancelled")
                continue
            cost = self._bucket(len(request.prompt))
            if admitted and cost > budget:
                break
            budget -= cost
            slot = self._running.index(None)
            self._running[slot] = self._queue.popleft()
            admitted.append((slot, request))
        return admitted

    def _prefill_slot(self, slot: int, request: Request) -> int:
        n = len(request.prompt)
        tokens = np.zeros((1, self._bucket(n)), np.int32)
        tokens[0, :n] = request.prompt
        self._state, first = _prefill(
            self.graphdef,
            self.params,
            self._state,
            tokens,
            np.int32(n),
            np.int32(slot),
            np.asarray(jax.random.key_data(jax.random.key(request.seed)), np.uint32),
            np.float32(request.temperature),
            np.float32(request.top_p),
        )
        return int(first)

    def _advance(self, slot: int, request: Request, token: int) -> None:
        """A slot's new token: passed on, or the end of its request (which frees the slot)."""
        reason = None
        if request.cancelled:
            reason = "cancelled"
        elif token in request.stop_ids:
            reason = "stop"
        else:
            request.generated += 1
            if not request.on_token(token):
                reason = "stop"
            elif request.generated >= request.max_tokens:
                reason = "length"
        if reason is not None:
            with self._cv:
                self._running[slot] = None
            request.on_finish(reason)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._queue and not any(self._running):
                    self._cv.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                for slot, request in admitted:
                    self._advance(slot, request, self._prefill_slot(slot, request))
                running = [(slot, r) for slot, r in enumerate(self._running) if r is not None]
                if running:
                    self._state, tokens = _decode(self.graphdef, self.params, self.weights, self._state)
                    tokens = np.asarray(tokens)
                    for slot, request in running:
                        self._advance(slot, request, int(tokens[slot]))
            except Exception:  # a failed step ends the requests it held; the server goes on with a fresh cache
                traceback.print_exc()
                with self._cv:
                    failed = [r for r in self._running if r is not None]
                    self._running = [None] * self.slots
                self._state = self._empty_state()
                for request in failed:
                    request.on_finish("error")
        with self._cv:
            leftover = [r for r in self._running if r is not None] + list(self._queue)
            self._running, self._queue = [None] * self.slots, collections.deque()
        for request in leftover:
            request.on_finish("cancelled")
