"""jaxllm's multiple-choice items as a task for EleutherAI's lm-evaluation-harness (`lm-eval`), so that a model
exported with `python -m jaxllm.hf export` and scored by lm-eval's `hf` backend gets the per-choice
log-likelihoods and accuracy that `python -m jaxllm.evaluate --choices=ITEMS.jsonl` reports (tests/test_lm_eval.py
checks they agree). It writes two files and imports nothing of lm-eval (a test dependency, requirements-dev.txt):

    write_task(items, "lm_eval_tasks/")  # lm_eval_tasks/jaxllm_choices.yaml and .jsonl
    lm-eval run --model hf --model_args pretrained=exported/,tokenizer=TOKENIZER_DIR,dtype=float32 \\
        --include_path lm_eval_tasks/ --tasks jaxllm_choices --device cpu

The `hf` backend needs a transformers tokenizer whose text encoding is the run's and which reads the chat markup
below as its special tokens (tests/test_lm_eval.py builds one from a sentencepiece tokenizer.model). Run lm-eval
without --apply_chat_template: the prompt template is already jaxllm's chat template, in text.

How the scoring lines up: jaxllm scores encode(choice) after reply_prompt(question), that is
<bos> <|user|> encode(question) <|end|> <|assistant|>. lm-eval's causal models encode context + continuation
together and take the continuation's tokens as those after the context's; the context ends with the special
token <|assistant|>, which a transformers tokenizer splits the text at, so the choice is encoded on its own, as
in jaxllm; target_delimiter is '', as jaxllm puts nothing between the prompt and the choice.
The context starts with the text <bos>, so lm-eval adds no second one (it checks for the tokenizer's bos string).
lm-eval's acc is jaxllm's mc_acc; its acc_norm divides by characters, jaxllm's mc_acc_norm by UTF-8 bytes (the
same for ASCII choices). Not for ChatML checkpoints imported from Hugging Face: their markup differs.
"""

from __future__ import annotations

import json
import pathlib

from jaxllm.tokenizer import BOS, CHAT_TOKENS, SPECIALS

_, USER, ASSISTANT, END = CHAT_TOKENS
# jaxllm.posttrain.chat_template's reply prompt for one user turn, as a Jinja template over an item
PROMPT_TEMPLATE = f"{SPECIALS[BOS]}{USER}{{{{question}}}}{END}{ASSISTANT}"


def _markup_inside(items: list[dict]) -> str:
    """The first item text that holds a special token's string ('' if none): lm-eval's tokenizer would read it as
    that control token, jaxllm's encode as plain text."""
    for i, item in enumerate(items):
        for text in (item["question"], *item["choices"]):
            found = next((s for s in SPECIALS if s in text), None)
            if found:
                return f"item {i} has {found!r} in {text!r:.80}"
    return ""


def write_task(items: list[dict], out_dir: pathlib.Path, name: str = "jaxllm_choices") -> pathlib.Path:
    """Writes out_dir/<name>.jsonl (the items as {"question", "choices", "answer"}) and out_dir/<name>.yaml (the
    lm-eval task reading it); returns the YAML's path. Give out_dir as lm-eval's --include_path (or
    TaskManager(include_path=...)) and name as the task."""
    bad = _markup_inside(items)
    if bad:
        raise ValueError(f"{bad}: lm-eval would score a different token sequence; drop or reword the item")
    out_dir = pathlib.Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"{name}.jsonl"
    data.write_text(
        "".join(json.dumps({k: item[k] for k in ("question", "choices", "answer")}) + "\n" for item in items)
    )
    # JSON values are YAML: every string is quoted, whatever it holds
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": PROMPT_TEMPLATE,
        "doc_to_choice": "choices",  # field names: lm-eval reads the list and the index as they are
        "doc_to_target": "answer",
        "target_delimiter": "",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1},
    }
    path = out_dir / f"{name}.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items()))
    return path
