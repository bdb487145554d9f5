"""`m3 text-embeddings TEXT... --memory DIR --out FILE`: every text embedding that queries of these
texts need (each text and its form without colour words, the canonical negatives, the memory's
background caption), computed where the text encoder is.

    m3 text-embeddings "yellow bath duck" cup "toy bear" --memory runs/memory --out runs/texts.safetensors
    ros2 run m3_grasp m3_query_node --ros-args -p memory_path:=runs/memory \\
        -p text_embeddings:=runs/texts.safetensors

A query node (or `QueryEngine(text_table=TextEmbeddingTable.load(FILE))`) then answers these texts
without loading the text encoder: the sentence model is 83 MB and takes seconds to load, more than a
GPU machine's upload or a robot's start-up should spend. Other texts are still encoded when asked.
`--model language` instead of `--memory` needs no memory yet (the language model's default
background caption), e.g. while the memory trains. Exit codes: 0 written, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m3_core.errors import M3Error
from m3_core.features.language import BACKGROUND_CAPTION
from m3_core.features.registry import get_model
from m3_core.model.memory import M3Memory
from m3_core.query.config import QueryConfig
from m3_core.query.engine import QueryEngine, query_texts
from m3_core.query.text_table import TextEmbeddingTable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="+", help='the texts a robot will be asked, e.g. "yellow bath duck"')
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--memory", type=Path, help="memory directory the queries will ask")
    source.add_argument(
        "--model", choices=["language"], help="without a memory: the language model's embeddings"
    )


def _table_for_memory(memory_dir: Path, texts: list[str]) -> TextEmbeddingTable:
    engine = QueryEngine(M3Memory.load(memory_dir), QueryConfig())
    model = engine.model_name("")
    for text in texts:
        engine.encode(text, model)
    return engine.text_table


def _table_for_model(model: str, texts: list[str]) -> TextEmbeddingTable:
    wanted = []
    for text in texts:  # what QueryEngine.encode embeds, with the model's default background caption
        forms, negatives = query_texts(text, QueryConfig(), BACKGROUND_CAPTION)
        wanted += forms + negatives
    wanted = list(dict.fromkeys(wanted))
    encoder = get_model(model)
    table = TextEmbeddingTable()
    table.put(model, wanted, encoder.encode_text(wanted).float(), pinned=True)
    table.model_ids[model] = str(encoder.model_id)
    return table


def run(args: argparse.Namespace) -> int:
    try:
        if args.out.is_dir():
            raise ValueError(f"--out {args.out} is a directory; name the file to write")
        texts = [" ".join(t.split()) for t in args.texts]
        if not all(texts):
            raise ValueError("a text is empty")
        table = (
            _table_for_memory(args.memory, texts) if args.memory else _table_for_model(args.model, texts)
        )
        path = table.save(args.out)
    except (ValueError, TypeError, OSError, M3Error) as err:
        print(f"m3 text-embeddings: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{len(table.texts(m))} {m!r}" for m in table.models())
    print(f"wrote {counts} text embeddings to {path}")
    return 0
