"""The Shakespeare speedrun's data: one text file, char tokenizer, its last 10% held out (nanoGPT's split)."""

import dataclasses

from jaxllm.config import load_experiment, validate
from jaxllm.data.prepare import prepare


def test_a_single_file_is_split_by_position_into_90_and_10_percent(tmp_path):
    text = "".join(f"LINE {i}: to be or not to be\n" for i in range(500))
    (tmp_path / "play.txt").write_text(text)
    cfg = load_experiment("shakespeare_char")
    cfg = validate(
        dataclasses.replace(
            cfg,
            data=dataclasses.replace(
                cfg.data, sources=(f"file:{tmp_path / 'play.txt'}",), cache_dir=str(tmp_path / "cache")
            ),
        )
    )
    prepared = prepare(cfg, progress=False)
    decode = prepared.tokenizer.decode
    cut = int(len(text) * 0.9)
    assert decode(prepared.train_tokens) == text[:cut]  # <bos> decodes to nothing
    assert decode(prepared.val_tokens) == text[cut:]
