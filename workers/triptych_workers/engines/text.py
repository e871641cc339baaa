"""Incremental detokenization with stop strings (torch-free, shared by every backend that decodes itself).

Text is emitted only when it is final: a token that ends inside a multi-byte UTF-8 sequence decodes to U+FFFD
and is held until the sequence completes, and the last ``max(len(stop)) - 1`` characters are held while they
could still be the start of a stop string. When a stop string appears the text is cut just before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

_REPLACEMENT = "\ufffd"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    stopped: bool


class IncrementalDetokenizer:
    """Feed token ids one at a time with ``push``; call ``flush`` when generation ends for other reasons."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already handed out
        self._text = ""
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return self._text

    def push(self, token_id: int) -> TextDelta:
        if self.stopped:
            raise RuntimeError("push after a stop string ended the text")
        self._ids.append(token_id)
        full = self._decode(self._ids)
        if self._stop:
            # Only the region that can contain a new match: it starts at most len(stop)-1 before the emitted
            # end.
            search_from = max(0, self._emitted - self._hold)
            hits = [i for i in (full.find(s, search_from) for s in self._stop) if i >= 0]
            if hits:
                cut = min(hits)
                self.stopped = True
                return self._emit(full[:cut], stopped=True)
        stable = full[:-1] if full.endswith(_REPLACEMENT) else full
        return self._emit(stable[: max(self._emitted, len(stable) - self._hold)], stopped=False)

    def flush(self) -> TextDelta:
        """Everything held back, once no token will follow."""
        if self.stopped:
            return TextDelta("", stopped=True)
        return self._emit(self._decode(self._ids), stopped=False)

    def _emit(self, upto: str, *, stopped: bool) -> TextDelta:
        delta = upto[self._emitted :] if len(upto) > self._emitted else ""
        self._emitted += len(delta)
        self._text += delta
        return TextDelta(delta, stopped)
