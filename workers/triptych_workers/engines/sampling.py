"""How tokens are picked (``SamplingParams``, vLLM's names and semantics) and how they come out: one
``DecodeStep`` per token inside an engine, ``TokenFrame``s (the tokens that were ready together) between
the roles and to the client."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from triptych_workers.engines.errors import EngineError, InvalidEngineInputError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens, with vLLM's names, ranges and semantics (``engines/reference/engine.py``'s
    ``TokenSampler`` applies them; a value out of range is a 400 naming the parameter).

    ``temperature == 0`` is greedy; ``seed`` makes sampling reproducible across the split: step ``i`` draws
    from its own generator seeded by (seed, i), so prefill (step 0) and decode (steps 1..) on different
    processes give the same stream as one process would.

    What changes the logits, in vLLM's order: ``logit_bias`` (token id, bias) pairs are added; then
    ``repetition_penalty`` (HF/vLLM: a positive logit of a token seen in the prompt or the output so far is
    divided by it, a negative one multiplied), ``frequency_penalty`` (subtracted once per occurrence in the
    output so far) and ``presence_penalty`` (subtracted once if it occurs there; both as OpenAI defines them).
    These steer greedy decoding too. What filters the candidates when sampling (no effect on greedy): after
    the temperature, ``min_p`` drops tokens less probable than ``min_p`` times the most probable one, then
    ``top_k`` keeps the ``k`` most probable (0 or -1: all), then ``top_p`` the nucleus."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias in [-100, 100]) pairs; the ids are checked against the model's vocabulary by the
    engine (only it knows the vocabulary)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidEngineInputError("max_tokens must be at least 1", param="max_tokens")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise InvalidEngineInputError("temperature must be a finite number >= 0", param="temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidEngineInputError("top_p must be in (0, 1]", param="top_p")
        if any(not s for s in self.stop):
            raise InvalidEngineInputError("stop strings must not be empty", param="stop")
        if self.top_k < -1:
            raise InvalidEngineInputError("top_k must be -1 or 0 (disabled) or at least 1", param="top_k")
        if not 0 <= self.min_p <= 1:
            raise InvalidEngineInputError("min_p must be in [0, 1]", param="min_p")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise InvalidEngineInputError(
                "repetition_penalty must be a finite number > 0", param="repetition_penalty"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise InvalidEngineInputError(f"{name} must be in [-2, 2]", param=name)
        for token_id, bias in self.logit_bias:
            if token_id < 0 or not -100 <= bias <= 100:
                raise InvalidEngineInputError(
                    f"logit_bias needs token ids >= 0 and biases in [-100, 100], not {token_id}: {bias}",
                    param="logit_bias",
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class DecodeStep:
    """One generated token. ``text`` is the new text it completes (may be empty: a partial UTF-8
    sequence, held-back text that may start a stop string, or a special token). The last step has
    ``finish_reason`` set."""

    index: int
    token_id: int
    text: str
    finish_reason: FinishReason | None = None


@dataclass(frozen=True, slots=True)
class TokenFrame:
    """Tokens of one answer that were ready together: what an engine yields, what one reply chunk carries
    and what the frontend sends as one event. ``index`` is the first token's position in the answer,
    ``text`` the new text the tokens complete together (may be empty, as for a ``DecodeStep``). The last
    frame has ``finish_reason`` set; it may hold no token at all (an engine that announces the end in an
    event of its own after the last token: nothing is held back waiting for it)."""

    index: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None

    @classmethod
    def of(cls, step: DecodeStep) -> TokenFrame:
        return cls(step.index, (step.token_id,), step.text, step.finish_reason)

    def __len__(self) -> int:
        return len(self.token_ids)

    def then(self, later: TokenFrame) -> TokenFrame:
        """This frame and the one after it as one frame (the later one's finish reason ends it)."""
        if self.finish_reason is not None:
            raise EngineError("no frame follows a finished one")
        return TokenFrame(
            self.index, self.token_ids + later.token_ids, self.text + later.text, later.finish_reason
        )


def coalesce(frames: Sequence[TokenFrame]) -> TokenFrame:
    """Consecutive frames of one answer as one."""
    out = frames[0]
    for frame in frames[1:]:
        out = out.then(frame)
    return out
