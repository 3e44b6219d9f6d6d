"""Publish a folder of text files as a TFDS dataset (ArrayRecord), readable anywhere as `tfds:NAME@DATA_DIR`.

    python -m jaxllm.data.tfds_builder --folder=notes/ --name=my_corpus --data_dir=~/tensorflow_datasets

Runs offline and without TensorFlow. The dataset has one split, 'train', one record a file (what the `dir:` source
reads; TFDS orders records by a hash of their key) with features id, text and kind ('code' or 'prose'). Copy
DATA_DIR/NAME (to a gs:// bucket, say) and `tfds.data_source(NAME, data_dir=...)` opens it without this module: the
dataset describes itself. The train/validation split is done later, by document id, so one split is enough.
"""

from __future__ import annotations

import pathlib
import sys

from jaxllm.cli import run_main
from jaxllm.data.sources import SourceStats, dir_documents


def build_text_folder(folder: str, name: str, data_dir: str, version: str = "1.0.0") -> pathlib.Path:
    """Prepares the dataset and returns its directory (DATA_DIR/NAME/VERSION)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (slow to import: --help and bad flags answer without it)

    tfds.disable_progress_bar()
    source_folder = pathlib.Path(folder).expanduser()
    next(dir_documents(folder, SourceStats()), None)  # a missing folder fails here, before TFDS writes anything

    # Created per call so that the dataset name is the user's; skip_registration allows building several.
    class TextFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"Text files of {source_folder.resolve().name}, one record a file.",
                features=tfds.features.FeaturesDict(
                    {"id": tfds.features.Text(), "text": tfds.features.Text(), "kind": tfds.features.Text()}
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for doc in dir_documents(folder, SourceStats()):
                yield doc.id, {"id": doc.id, "text": doc.text, "kind": doc.kind}

    TextFolder.name = name
    builder = TextFolder(data_dir=str(pathlib.Path(data_dir).expanduser()), file_format="array_record")
    builder.download_and_prepare()
    return pathlib.Path(builder.data_dir)


def main(argv: list[str]) -> int:
    args = dict(arg[2:].partition("=")[::2] for arg in argv if arg.startswith("--"))
    missing = [k for k in ("folder", "name", "data_dir") if not args.get(k)]
    if missing or len(args) != len(argv):
        print(
            "usage: python -m jaxllm.data.tfds_builder --folder=DIR --name=NAME --data_dir=DIR [--version=1.0.0]",
            file=sys.stderr,
        )
        return 2
    path = build_text_folder(args["folder"], args["name"], args["data_dir"], args.get("version", "1.0.0"))
    print(f"wrote {path}; read it with --data.sources='[\"tfds:{args['name']}@{args['data_dir']}\"]'")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
