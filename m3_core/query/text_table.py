"""Text embeddings per (model, text): the query engine's cache, and a file of precomputed ones.

    table = TextEmbeddingTable.load("texts.safetensors")       # no text encoder needed for these
    engine = QueryEngine(memory, config, text_table=table)

A text encoder can be larger than what a query machine should load (or than what travels to it):
its embeddings for the texts a robot will be asked, plus the negatives and the memory's background
caption, are computed once where the model is (`TextEmbeddingTable.save`) and read back here.
Entries loaded from a file are kept for good; encoded ones are evicted least recently used first.

File format (safetensors): one float32 tensor [n, d] per model, named by the model ("language",
"clip"); metadata "<model>.texts" = JSON list of the n texts (row order) and "<model>.model_id" =
the encoder's model id, checked against the memory's so that embeddings of another model are
refused instead of giving silently wrong relevance.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes

from m3_core.scene import atomic_write_bytes

FORMAT = "m3_text_embeddings"
FORMAT_VERSION = "1"


def normalise_text(text: str) -> str:
    """The key a text is stored under: surrounding and repeated blanks removed (as queries are)."""
    return " ".join(text.split())


class TextEmbeddingTable:
    """Embeddings [d] (float32, CPU) per (model, text), with each model's encoder id."""

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        """Encoded entries kept (entries from a file do not count and are never evicted)."""
        self._rows: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._pinned: set[tuple[str, str]] = set()
        self.model_ids: dict[str, str] = {}
        """model -> id of the encoder that made its embeddings ("" when unknown)."""
        self.source: Path | None = None
        """The file the pinned entries came from, for messages."""

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return (key[0], normalise_text(key[1])) in self._rows

    def __getitem__(self, key: tuple[str, str]) -> torch.Tensor:
        """The embedding of (model, text); KeyError when absent."""
        key = (key[0], normalise_text(key[1]))
        emb = self._rows[key]
        self._rows.move_to_end(key)
        return emb

    def get(self, model: str, text: str) -> torch.Tensor | None:
        key = (model, normalise_text(text))
        return self[key] if key in self._rows else None

    def texts(self, model: str) -> list[str]:
        return [t for m, t in self._rows if m == model]

    def models(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self._rows))

    def put(self, model: str, texts: Iterable[str], embeddings: torch.Tensor, pinned: bool = False) -> None:
        """Store embeddings [n, d] of n texts (pinned: never evicted)."""
        texts = [normalise_text(t) for t in texts]
        embeddings = torch.as_tensor(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
            raise ValueError(
                f"embeddings must be [{len(texts)}, d] for {len(texts)} texts, got {tuple(embeddings.shape)}"
            )
        dims = {int(e.shape[0]) for (m, _), e in self._rows.items() if m == model}
        if dims and dims != {int(embeddings.shape[1])}:
            raise ValueError(
                f"{model!r} embeddings are {dims.pop()}-d here, got {embeddings.shape[1]}-d ones"
            )
        for text, emb in zip(texts, embeddings.detach().to("cpu", torch.float32)):
            key = (model, text)
            self._rows[key] = emb.clone()
            self._rows.move_to_end(key)
            if pinned:
                self._pinned.add(key)
        self._evict()

    def _evict(self) -> None:
        extra = len(self._rows) - len(self._pinned) - self.max_entries
        for key in [k for k in self._rows if k not in self._pinned][: max(extra, 0)]:
            del self._rows[key]

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write every entry to a safetensors file (see the module docstring), atomically."""
        path = Path(path)
        tensors, metadata = {}, {"format": FORMAT, "version": FORMAT_VERSION}
        for model in self.models():
            texts = self.texts(model)
            tensors[model] = torch.stack([self._rows[(model, t)] for t in texts]).contiguous()
            metadata[f"{model}.texts"] = json.dumps(texts)
            metadata[f"{model}.model_id"] = self.model_ids.get(model, "")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path, max_entries: int = 256) -> TextEmbeddingTable:
        """A table holding a file's embeddings (pinned); ValueError for a file of another format."""
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is not a readable safetensors file of text embeddings: {err}") from err
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a text-embedding file (metadata format {metadata.get('format')!r}, "
                f"expected {FORMAT!r}); write one with TextEmbeddingTable.save"
            )
        table = cls(max_entries)
        for model, embeddings in tensors.items():
            texts = json.loads(metadata.get(f"{model}.texts", "null") or "null")
            if not isinstance(texts, list) or len(texts) != embeddings.shape[0]:
                raise ValueError(
                    f"{path}: {model!r} has {embeddings.shape[0]} rows but its text list does not match"
                )
            table.put(model, texts, embeddings.float(), pinned=True)
            table.model_ids[model] = metadata.get(f"{model}.model_id", "")
        table.source = path
        return table
