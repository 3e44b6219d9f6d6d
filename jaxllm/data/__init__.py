"""Data: document sources, cleaning and dedup, tokenizer training, token shards and the batch loader."""
