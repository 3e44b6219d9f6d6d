"""Hugging Face interop for the GPT-2 and Llama families: configs and safetensors tensors, never pickle.

The command (`python -m jaxllm.hf export|import`, jaxllm/hf.py) moves whole runs: export writes `config.json` and
`model.safetensors` that transformers loads into GPT2LMHeadModel or LlamaForCausalLM, the run's tokenizer file
(sentencepiece `tokenizer.model` with a `tokenizer.json` and `tokenizer_config.json` built from it for transformers,
`char_tokenizer.json` for the character kind, renamed so it is not taken for a transformers `tokenizer.json`, or an
imported checkpoint's `tokenizer.json` with its `tokenizer_config.json`: jaxllm.interop.hf_tokenizer), and
`jaxllm.json` (the run's whole config, so an import restores data and optimizer settings too). Import reads such a
directory (or any GPT-2 / Llama safetensors checkpoint, sharded or not, with a transformers `tokenizer.json` or a
sentencepiece `tokenizer.model`) into a step-0 checkpoint that generate, evaluate and train accept;
`--init_from=hf:DIR` starts training from it.

The safetensors format (8-byte header length, JSON header, raw little-endian tensors) is read and written here
with numpy: the runtime needs neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import struct

import jax
import ml_dtypes
import numpy as np

from jaxllm.config import ConfigError, ModelConfig

CHAR_TOKENIZER_NAME = "char_tokenizer.json"
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


# ---------------------------------------------------------------------------------------------------------------
# safetensors


def write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
    """float32 tensors, each stored C-contiguous after a JSON header padded to 8 bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    arrays = {name: np.ascontiguousarray(a, np.float32) for name, a in tensors.items()}
    for name, a in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in arrays.values():
            f.write(a.tobytes())


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of one file as float32 numpy arrays (bf16 and f16 widened)."""
    dtypes = _DTYPES | {"BF16": ml_dtypes.bfloat16}
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in dtypes:
            raise ConfigError(f"{path}: tensor {name} has dtype {info['dtype']}; jaxllm reads {sorted(dtypes)}")
        begin, end = info["data_offsets"]
        array = np.frombuffer(
            data,
            dtypes[info["dtype"]],
            offset=8 + n + begin,
            count=(end - begin) // np.dtype(dtypes[info["dtype"]]).itemsize,
        )
        out[name] = array.reshape(info["shape"]).astype(np.float32)
    return out


def read_hf_tensors(hf_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """model.safetensors, or the files named by model.safetensors.index.json; refuses pickled checkpoints."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        tensors = {}
        for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors |= read_safetensors(hf_dir / name)
        return tensors
    found = ", ".join(sorted(p.name for p in hf_dir.glob("*.bin"))) or "nothing"
    raise ConfigError(
        f"--hf_dir={hf_dir} has no model.safetensors (found {found}); jaxllm reads safetensors only, "
        "never pickle: re-save it with save_pretrained(safe_serialization=True)"
    )


# ---------------------------------------------------------------------------------------------------------------
# Configs


def hf_config(m: ModelConfig) -> dict:
    """transformers' config.json for this model (GPT2LMHeadModel or LlamaForCausalLM). The special token ids are the
    tokenizer's, which export fills in; None here, rather than transformers' defaults (GPT-2's 50256)."""
    common = {
        "vocab_size": m.vocab_size,
        "tie_word_embeddings": m.tie_embeddings,
        **dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id")),
        "torch_dtype": "float32",
    }
    if m.family == "gpt2":
        if m.kv_heads != m.n_head:
            raise ConfigError(
                f"model.n_kv_head={m.n_kv_head}: GPT-2 in transformers has no grouped-query attention; "
                "export a gpt2 model with n_kv_head=0, or use the llama family"
            )
        return common | {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": m.n_embd,
            "n_layer": m.n_layer,
            "n_head": m.n_head,
            "n_positions": m.block_size,
            "n_ctx": m.block_size,
            "n_inner": m.hidden,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": m.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        }
    return common | {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": m.n_embd,
        "intermediate_size": m.hidden,
        "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.head_dim,
        "max_position_embeddings": m.block_size,
        "rms_norm_eps": m.norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
    }


def model_config_from_hf(hf: dict) -> ModelConfig:
    """The inverse of hf_config, for checkpoints made by jaxllm or by transformers."""
    m = _model_config_from_hf(hf)
    # an MLP width that the family's own rule gives is stored as 0 (the rule), as experiments write it; likewise
    # n_kv_head=0 stands for plain multi-head attention
    by_rule = dataclasses.replace(m, mlp_hidden=0)
    return by_rule if by_rule.hidden == m.mlp_hidden else m


def _model_config_from_hf(hf: dict) -> ModelConfig:
    kind = hf.get("model_type")
    if kind == "gpt2":
        n_embd = hf["n_embd"]
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"GPT-2 activation {hf['activation_function']!r}: jaxllm has the tanh GELU (gelu_new)")
        return ModelConfig(
            family="gpt2",
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=n_embd,
            mlp_hidden=hf.get("n_inner") or 4 * n_embd,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    if kind == "llama":
        e, h = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim", e // h) != e // h or hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ConfigError(
                "this Llama checkpoint has head_dim != hidden_size / heads or biases: jaxllm's llama family has neither"
            )
        rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"RoPE scaling {rope['rope_type']!r}: jaxllm implements plain RoPE only")
        return ModelConfig(
            family="llama",
            vocab_size=hf["vocab_size"],
            block_size=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"],
            n_head=h,
            n_kv_head=0 if hf.get("num_key_value_heads", h) == h else hf["num_key_value_heads"],
            n_embd=e,
            mlp_hidden=hf["intermediate_size"],
            tie_embeddings=hf.get("tie_word_embeddings", False),
            rope_theta=float(rope["rope_theta"]),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
        )
    raise ConfigError(f"model_type {kind!r}: jaxllm imports gpt2 and llama checkpoints")


# ---------------------------------------------------------------------------------------------------------------
# Weights. jaxllm keeps per-head axes, q (E,H,Dh), k/v (E,KV,Dh), o (H,Dh,E), stacked over a leading layer axis;
# GPT-2's Conv1D stores (in, out) with q|k|v fused, Llama's Linear stores (out, in).


def to_hf_tensors(params: dict, m: ModelConfig) -> dict[str, np.ndarray]:
    p = jax.tree.map(np.asarray, params)
    blocks, e = p["blocks"], m.n_embd
    out = {}
    for i in range(m.n_layer):
        attn, mlp, n1, n2 = ({n: a[i] for n, a in blocks[k].items()} for k in ("attn", "mlp", "norm1", "norm2"))
        if m.family == "gpt2":
            pre = f"transformer.h.{i}."
            out |= {
                pre + "ln_1.weight": n1["scale"],
                pre + "ln_1.bias": n1["bias"],
                pre + "attn.c_attn.weight": np.concatenate([attn[k].reshape(e, -1) for k in "qkv"], axis=1),
                pre + "attn.c_attn.bias": np.concatenate([attn[k + "_bias"].reshape(-1) for k in "qkv"]),
                pre + "attn.c_proj.weight": attn["o"].reshape(-1, e),
                pre + "attn.c_proj.bias": attn["o_bias"],
                pre + "ln_2.weight": n2["scale"],
                pre + "ln_2.bias": n2["bias"],
                pre + "mlp.c_fc.weight": mlp["up"],
                pre + "mlp.c_fc.bias": mlp["up_bias"],
                pre + "mlp.c_proj.weight": mlp["down"],
                pre + "mlp.c_proj.bias": mlp["down_bias"],
            }
        else:
            pre = f"model.layers.{i}."
            out |= {
                pre + "input_layernorm.weight": n1["scale"],
                pre + "post_attention_layernorm.weight": n2["scale"],
                **{pre + f"self_attn.{k}_proj.weight": attn[k].reshape(e, -1).T for k in "qkv"},
                pre + "self_attn.o_proj.weight": attn["o"].reshape(-1, e).T,
                **{pre + f"mlp.{k}_proj.weight": mlp[k].T for k in ("gate", "up", "down")},
            }
    if m.family == "gpt2":
        out |= {
            "transformer.wte.weight": p["embed"],
            "transformer.wpe.weight": p["pos_embed"],
            "transformer.ln_f.weight": p["norm"]["scale"],
            "transformer.ln_f.bias": p["norm"]["bias"],
        }
    else:
        out |= {"model.embed_tokens.weight": p["embed"], "model.norm.weight": p["norm"]["scale"]}
    if not m.tie_embeddings:
        out["lm_head.weight"] = p["head"].T
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def from_hf_tensors(tensors: dict[str, np.ndarray], m: ModelConfig) -> dict:
    """The inverse of to_hf_tensors: a pure params dict (numpy) in jaxllm's layout. Accepts GPT-2 names with or
    without the `transformer.` prefix (transformers 5 adds it, older files lack it)."""

    def get(name: str) -> np.ndarray:
        for candidate in (name, name.removeprefix("transformer.")):
            if candidate in tensors:
                return tensors[candidate]
        raise ConfigError(
            f"the checkpoint has no tensor {name!r} that a {m.family} model with {m.n_layer} layers "
            f"needs (it has e.g. {sorted(tensors)[:4]})"
        )

    e, h, kv, dh = m.n_embd, m.n_head, m.kv_heads, m.head_dim
    layers = []
    for i in range(m.n_layer):
        if m.family == "gpt2":
            pre = f"transformer.h.{i}."
            w, b = get(pre + "attn.c_attn.weight"), get(pre + "attn.c_attn.bias")  # (E,3E), (3E,)
            layers.append(
                {
                    "norm1": {"scale": get(pre + "ln_1.weight"), "bias": get(pre + "ln_1.bias")},
                    "norm2": {"scale": get(pre + "ln_2.weight"), "bias": get(pre + "ln_2.bias")},
                    "attn": {
                        **{k: w[:, j * e : (j + 1) * e].reshape(e, h, dh) for j, k in enumerate("qkv")},
                        **{k + "_bias": b[j * e : (j + 1) * e].reshape(h, dh) for j, k in enumerate("qkv")},
                        "o": get(pre + "attn.c_proj.weight").reshape(h, dh, e),
                        "o_bias": get(pre + "attn.c_proj.bias"),
                    },
                    "mlp": {
                        "up": get(pre + "mlp.c_fc.weight"),
                        "up_bias": get(pre + "mlp.c_fc.bias"),
                        "down": get(pre + "mlp.c_proj.weight"),
                        "down_bias": get(pre + "mlp.c_proj.bias"),
                    },
                }
            )
        else:
            pre = f"model.layers.{i}."
            heads = {"q": h, "k": kv, "v": kv}
            layers.append(
                {
                    "norm1": {"scale": get(pre + "input_layernorm.weight")},
                    "norm2": {"scale": get(pre + "post_attention_layernorm.weight")},
                    "attn": {
                        **{k: get(pre + f"self_attn.{k}_proj.weight").T.reshape(e, n, dh) for k, n in heads.items()},
                        "o": get(pre + "self_attn.o_proj.weight").T.reshape(h, dh, e),
                    },
                    "mlp": {k: get(pre + f"mlp.{k}_proj.weight").T for k in ("gate", "up", "down")},
                }
            )
    blocks = {
        part: {name: np.stack([layer[part][name] for layer in layers]) for name in layers[0][part]}
        for part in layers[0]
    }
    if m.family == "gpt2":
        params = {
            "embed": get("transformer.wte.weight"),
            "pos_embed": get("transformer.wpe.weight"),
            "norm": {"scale": get("transformer.ln_f.weight"), "bias": get("transformer.ln_f.bias")},
        }
    else:
        params = {"embed": get("model.embed_tokens.weight"), "norm": {"scale": get("model.norm.weight")}}
    if not m.tie_embeddings:
        params["head"] = get("lm_head.weight").T
    return params | {"blocks": blocks}


def add_token_rows(m: ModelConfig, params: dict, ids: list[int], n_tokens: int) -> tuple[ModelConfig, dict]:
    """The config and params with embedding (and untied head) rows for tokens added at `ids`, grown to hold them:
    each such row is the mean of the rows of the n_tokens tokens the model was trained with, the usual start for
    new tokens (their first logits are average ones, not noise)."""
    if not ids:
        return m, params
    rows = max(m.vocab_size, max(ids) + 1)

    def grow(table: np.ndarray) -> np.ndarray:  # (V, E) -> (rows, E)
        out = np.concatenate([table, np.zeros((rows - len(table), table.shape[1]), table.dtype)])
        out[ids] = table[:n_tokens].mean(axis=0)
        return out

    grown = params | {"embed": grow(params["embed"])}
    if "head" in params:  # (E, V)
        grown["head"] = grow(params["head"].T).T
    return dataclasses.replace(m, vocab_size=rows), grown


def load_hf(hf_dir: pathlib.Path) -> tuple[ModelConfig, dict]:
    """The model config and float32 numpy params of a Hugging Face directory."""
    hf_dir = pathlib.Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"--hf_dir={hf_dir} has no config.json: point it at a save_pretrained directory")
    m = model_config_from_hf(json.loads((hf_dir / "config.json").read_text()))
    return m, from_hf_tensors(read_hf_tensors(hf_dir), m)


def init_params(init_from: str, m: ModelConfig) -> dict:
    """Parameters for `train.init_from=hf:DIR`, after checking that DIR holds a model of the configured shape."""
    hf_model, params = load_hf(pathlib.Path(init_from.removeprefix("hf:")))
    fields = [
        "family",
        "vocab_size",
        "n_layer",
        "n_head",
        "kv_heads",
        "n_embd",
        "hidden",
        "tie_embeddings",
        "rope_theta",
        "norm_eps",
    ] + (["block_size"] if m.family == "gpt2" else [])  # learned positions
    differing = [
        f"model.{f}={getattr(hf_model, f)} (configured {getattr(m, f)})"
        for f in fields
        if getattr(hf_model, f) != getattr(m, f)
    ]
    if differing:
        raise ConfigError(
            f"train.init_from={init_from} holds a different model: {', '.join(differing)}; set those "
            "--model.* overrides (kv_heads is model.n_kv_head, hidden is model.mlp_hidden)"
        )
    return params
