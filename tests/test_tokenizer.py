import pytest

from jaxllm import tokenizer as tok
from jaxllm.config import ConfigError
from jaxllm.data.sources import SourceStats, stdlib_documents


@pytest.fixture(scope="module")
def stdlib_docs():
    return list(stdlib_documents(SourceStats()))


@pytest.fixture(scope="module")
def bpe(stdlib_docs, tmp_path_factory):
    lines = (line for d in stdlib_docs[::20] for line in d.text.split("\n"))
    return tok.train_bpe(lines, 1024, tmp_path_factory.mktemp("tok") / "tokenizer.model")


def test_bpe_round_trips_every_stdlib_file(bpe, stdlib_docs):
    texts = [d.text for d in stdlib_docs]
    encoded = bpe.encode_batch(texts)
    failures = [d.id for d, ids, t in zip(stdlib_docs, encoded, texts) if bpe.decode(ids) != t]
    assert failures == []
    assert len(texts) > 1000


def test_whitespace_unicode_and_unseen_bytes_round_trip(bpe):
    text = "def f():\n\tif x:\n        return '\u00e9\u4e2d\U0001f600'\r\n\n\n  trailing  \x00\x7f"
    assert bpe.decode(bpe.encode(text)) == text


def test_special_tokens_have_fixed_ids_and_are_never_produced_from_text(bpe):
    assert [bpe.sp.id_to_piece(i) for i in range(len(tok.SPECIALS))] == [
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
        *tok.CHAT_TOKENS,
    ]
    ids = bpe.encode("<|user|> hi <|end|> <s></s>")
    assert all(i >= len(tok.SPECIALS) for i in ids)
    assert bpe.special_id("<|assistant|>") == 6


def test_token_bytes_add_up_to_the_text(bpe):
    text = "x = 'caf\u00e9'\n\tprint(x)  # \u4e2d\n"
    sizes = bpe.token_bytes()
    assert sizes[: len(tok.SPECIALS)].sum() == 0
    assert sum(sizes[i] for i in bpe.encode(text)) == len(text.encode("utf-8"))


def test_char_tokenizer_round_trip(tmp_path):
    t = tok.train_char(["hello world\n", "Zebra!"], tmp_path / "tokenizer.json")
    assert t.vocab_size == len(tok.SPECIALS) + len(set("hello world\nZebra!"))
    assert t.decode(t.encode("Zebra hello\n")) == "Zebra hello\n"
    with pytest.raises(ValueError, match="not in this character tokenizer"):
        t.encode("q")
    assert tok.load(t.path).encode("ab") == t.encode("ab")


def test_vocab_too_large_for_corpus_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.vocab_size=50000 is larger than this corpus supports"):
        tok.train_bpe(iter(["tiny corpus", "of two lines"]), 50000, tmp_path / "tokenizer.model")
