"""datatrove's equivalents of jaxllm's cleaning stages over JSONL files, timed: run by `python -m jaxllm.bench data
--datatrove=VENV` with that virtual environment's Python, never imported by jaxllm (datatrove is not a dependency).

  VENV/bin/python datatrove_stages.py INPUT_DIR OUTPUT_DIR WORKERS CPUS

Reads every *.jsonl of INPUT_DIR (text in "text", one task a file), runs the Gopher repetition and quality
filters, C4's quality filter with FineWeb's setting (no terminal-punctuation rule), FineWeb's quality filter and
the PII formatter (e-mails and IPs), in jaxllm's order, on datatrove's local executor with WORKERS processes, and
writes the kept documents uncompressed (jaxllm keeps its cleaned chunks uncompressed too). This process and its
workers run on the CPUs listed in CPUS (e.g. 0,1). Prints one JSON line: seconds, documents in and kept.

Not run, because they need a download: the fastText language filter (its model) and the C4 bad-words filter (its
word lists). Words and sentences of English come from spaCy's blank English pipeline, which needs no download.
"""

import json
import os
import sys
import tempfile
import time

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter


def main(input_dir: str, output_dir: str, workers: int, cpus: str) -> None:
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    tasks = len([name for name in os.listdir(input_dir) if name.endswith(".jsonl")])
    with tempfile.TemporaryDirectory() as logs:
        executor = LocalPipelineExecutor(
            pipeline=[
                JsonlReader(input_dir, glob_pattern="*.jsonl", text_key="text"),
                GopherRepetitionFilter(),
                GopherQualityFilter(),
                C4QualityFilter(filter_no_terminal_punct=False),
                FineWebQualityFilter(),
                PIIFormatter(),
                JsonlWriter(output_dir, compression=None),
            ],
            tasks=tasks,
            workers=workers,
            logging_dir=logs,
        )
        start = time.perf_counter()
        stats = executor.run()
        seconds = time.perf_counter() - start
    kept = sum(1 for name in os.listdir(output_dir) for _ in open(os.path.join(output_dir, name)))
    docs_in = sum(1 for name in os.listdir(input_dir) if name.endswith(".jsonl") for _ in open(f"{input_dir}/{name}"))
    print(json.dumps({"seconds": seconds, "documents": docs_in, "kept": kept, "stats": str(stats)[:2000]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
