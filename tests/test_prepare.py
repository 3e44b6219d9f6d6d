import shutil

from jaxllm.data.prepare import cache_key, is_validation, prepare
from tests.conftest import tiny_config


def test_split_is_stable_and_near_the_fraction():
    ids = [f"stdlib/module_{i}.py" for i in range(4000)]
    held_out = [i for i in ids if is_validation(i, 0.05)]
    assert held_out == [i for i in ids if is_validation(i, 0.05)]
    assert 150 < len(held_out) < 250


def test_prepared_data_is_reused_and_redone_when_inputs_change(tiny_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    cfg = tiny_config(corpus, tmp_path / "cache")
    first = prepare(cfg, progress=False)
    assert prepare(cfg, progress=False).dir == first.dir
    assert first.manifest["splits"]["train"]["tokens"] == len(first.train_tokens) > 1000
    (corpus / "extra.py").write_text("def added():\n    return 'a new file changes the inputs'\n" * 20)
    assert cache_key(cfg) != first.dir.name
    second = prepare(cfg, progress=False)
    assert second.dir != first.dir and (second.dir / "manifest.json").is_file()
