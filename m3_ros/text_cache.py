"""The query node's QueryCache with a bounded cache of query-text embeddings.

A robot asks the same few texts again and again ("yellow bath duck" after every step): their
embedding depends only on the memory (one cache per loaded memory), the model and the text, so it
is computed once. The negatives are already cached by QueryCache itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from m3_core.query import QueryCache


class TextCachingQueryCache(QueryCache):
    """QueryCache whose single-text encodings are kept (least recently used dropped past max_texts)."""

    def __init__(self, memory, device=None, max_texts: int = 256) -> None:
        super().__init__(memory, device)
        self.max_texts = int(max_texts)
        self.hits = 0
        self.misses = 0
        self._texts: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._texts_lock = threading.Lock()

    def encode(self, model: str, texts: list[str]) -> torch.Tensor:
        if len(texts) != 1:
            return super().encode(model, texts)
        key = (model, texts[0])
        with self._texts_lock:
            if key in self._texts:
                self.hits += 1
                self._texts.move_to_end(key)
                return self._texts[key]
        out = super().encode(model, texts)
        with self._texts_lock:
            self.misses += 1
            self._texts[key] = out
            while len(self._texts) > self.max_texts:
                self._texts.popitem(last=False)
        return out
