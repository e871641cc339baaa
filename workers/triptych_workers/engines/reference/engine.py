"""The reference engine: the tiny Qwen2-VL model on CPU, split into encode, prefill and decode.

``ReferenceModel`` is the synchronous core (what the tests compare with ``transformers``' ``generate``):

* **encode** runs the vision tower (``model.model.visual(pixel_values, grid_thw)``) on one image or video
  (pixels from Qwen2-VL's image processor; video frames patchified the way its video processor does, in numpy,
  so no torchvision is needed) and returns the merged patch embeddings, one row per placeholder token.
  **Audio**: the model has no audio tower, so a deterministic stand-in encodes it: log-mel frames (25 ms
  window,
  10 ms hop, 32 mels, per-clip normalised), four frames per token, projected to the hidden size by fixed-seed
  weights saved with the model, scaled to the text embeddings' magnitude. Its embeddings fill
  ``<|audio_pad|>`` placeholders and take ordinary 1-D positions. The answers mean nothing (no weights here
  do);
  what matters is that audio travels the same E -> P -> D path as images, cacheable by media hash.
* **prefill** embeds the prompt, writes each item's embeddings over its placeholder span, computes multimodal
  RoPE positions with the model's own ``get_rope_index`` (mm_token_type_ids: 1 image, 2 video), runs the
  language model once, exports the ``DynamicCache`` as one contiguous float32 buffer
  ``[layer, k/v, kv_head, token, head_dim]`` and picks the first token.
* **decode** rebuilds the ``DynamicCache`` from that buffer (zero-copy view) and continues token by token,
  with
  positions ``prompt_len + step + position_delta`` for the three RoPE sections.

Inputs are laid out exactly as ``generate`` lays them out (4-row position ids: text positions then the three
mrope rows, an all-ones attention mask), so the split path, the aggregated path and ``generate`` run the same
kernels and produce the same tokens. Sampling (``TokenSampler``, one per request and stage): logit bias and
the repetition/frequency/presence penalties over the request's history (prompt ids and tokens generated so
far: prefill sees the prompt, decode the prompt from ``PrefillResult.prompt_token_ids`` plus the first token
and its own), then greedy (argmax, first index on ties, as ``generate``), or temperature, min-p, top-k and
top-p where step ``i`` draws from ``torch.Generator`` seeded with ``(seed, i)``.

``ReferenceEngine`` is the async ``Engine`` over it: one worker thread owned by the engine runs every model
call, and decode advances one token per hop, so the requests a worker runs at once (``serving.concurrency``)
interleave token by token and leaving the async iterator stops generation at the next token.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import AsyncGenerator, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from safetensors.numpy import load_file
from transformers import DynamicCache, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from triptych_workers.engines.base import EngineInfo
from triptych_workers.engines.errors import EngineError, InvalidEngineInputError, PromptTooLongError
from triptych_workers.engines.kv import DecodeRequest, KVLayout, PrefillRequest, PrefillResult
from triptych_workers.engines.media import EncodedItem, EncodeRequest, MediaItem, RenderedPrompt
from triptych_workers.engines.reference.prompt import ReferencePrompter, smart_resize
from triptych_workers.engines.reference.spec import AUDIO_WEIGHTS, CLIP_MEAN, CLIP_STD
from triptych_workers.engines.sampling import DecodeStep, FinishReason, SamplingParams, TokenFrame
from triptych_workers.engines.tensors import TensorBuffer

_KV_ORDER = ("layer", "kv", "head", "token", "dim")


class ReferenceModel:
    """Synchronous encode / prefill / decode over one prepared model directory (one caller at a time)."""

    def __init__(self, model_dir: Path, *, num_threads: int | None = None) -> None:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.model_dir = model_dir
        self.prompter = ReferencePrompter(model_dir)
        self.spec = self.prompter.spec
        # Any: transformers' model classes are only partially typed.
        self.model: Any = cast(Any, Qwen2VLForConditionalGeneration).from_pretrained(
            str(model_dir), dtype=torch.float32
        )
        self.model.eval()
        processor_config = json.loads((model_dir / "processor_config.json").read_text())
        image_settings = {
            k: v for k, v in processor_config["image_processor"].items() if k != "image_processor_type"
        }
        self.image_processor: Any = Qwen2VLImageProcessorPil(**image_settings)
        audio = load_file(str(model_dir / AUDIO_WEIGHTS))
        self._mel_filters: npt.NDArray[np.float32] = audio["mel_filters"]
        self._audio_projection: npt.NDArray[np.float32] = audio["projection"]
        text_config = self.model.config.text_config
        self.kv_dims = (
            int(text_config.num_hidden_layers),
            int(text_config.num_key_value_heads),
            self.spec.head_dim,
        )
        self.vocab_size = int(text_config.vocab_size)
        self.info = EngineInfo(
            model=f"triptych-reference-{self.spec.digest()}",
            modalities=frozenset({"image", "video", "audio"}),
            max_model_len=self.spec.max_position_embeddings,
            eos_token_ids=self.prompter.eos_token_ids,
        )

    # -- encode ----------------------------------------------------------------------------------------------
    def encode(self, requests: Sequence[EncodeRequest]) -> list[EncodedItem]:
        return [self._encode_one(request) for request in requests]

    def _encode_one(self, request: EncodeRequest) -> EncodedItem:
        item, span = request.item, request.span
        if item.modality != span.modality or item.media_hash != span.media_hash:
            raise InvalidEngineInputError("encode request's item does not match its span", param="messages")
        expected = self.prompter.placeholder_count(item)
        if expected != span.length:
            raise InvalidEngineInputError(
                f"span of {span.length} tokens for an item of {expected}", param="messages"
            )
        grid: tuple[int, int, int] | None = None
        if item.modality == "audio":
            embeddings = self.audio_embeddings(item.data)
        else:
            pixels, grid = self.vision_inputs(item)
            with torch.inference_mode():
                out = self.model.model.visual(torch.from_numpy(pixels), grid_thw=torch.tensor([grid]))
            embeddings = out.pooler_output.contiguous().numpy()
        if embeddings.shape != (span.length, self.spec.hidden_size):
            raise EngineError(
                f"encoder produced {embeddings.shape}, expected ({span.length}, {self.spec.hidden_size})"
            )
        return EncodedItem(item.modality, item.media_hash, span, TensorBuffer.from_array(embeddings), grid)

    def vision_inputs(self, item: MediaItem) -> tuple[npt.NDArray[np.float32], tuple[int, int, int]]:
        """Flattened patches ``[t*h*w, C*tps*p*p]`` and the grid, as Qwen2-VL's processors produce them."""
        grid = self.prompter.vision_grid(item)
        if item.modality == "image":
            features = self.image_processor(images=[Image.fromarray(_rgb(item.data))], return_tensors="np")
            pixels = np.ascontiguousarray(features["pixel_values"], dtype=np.float32)
            got = tuple(int(d) for d in features["image_grid_thw"][0])
            if got != grid:
                raise EngineError(f"image processor grid {got} differs from the prompt's {grid}")
            return pixels, grid
        return self._video_patches(item.data), grid

    def _video_patches(self, frames: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Qwen2-VL's video preprocessing in numpy: resize, rescale, normalise, pad time, patchify."""
        spec = self.spec
        count, height, width = (int(d) for d in frames.shape[:3])
        rh, rw = smart_resize(
            height, width, spec.patch_size * spec.merge_size, spec.min_pixels, spec.max_pixels
        )
        resized = np.stack(
            [np.asarray(Image.fromarray(_rgb(f)).resize((rw, rh), Image.Resampling.BICUBIC)) for f in frames]
        ).astype(np.float32)
        mean = np.asarray(CLIP_MEAN, dtype=np.float32)
        std = np.asarray(CLIP_STD, dtype=np.float32)
        video = ((resized / np.float32(255.0) - mean) / std).transpose(0, 3, 1, 2)  # T, C, H, W
        tps, ps, ms = spec.temporal_patch_size, spec.patch_size, spec.merge_size
        if pad := -count % tps:
            video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
        grid_t, grid_h, grid_w = video.shape[0] // tps, rh // ps, rw // ps
        patches = video.reshape(grid_t, tps, 3, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return np.ascontiguousarray(
            patches.reshape(grid_t * grid_h * grid_w, 3 * tps * ps * ps), dtype=np.float32
        )

    def audio_embeddings(self, waveform: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """The deterministic stand-in audio encoder (see the module docstring)."""
        spec = self.spec
        frames = self.prompter.audio_frames(int(waveform.shape[0]))
        padded = np.zeros(frames * spec.audio_hop + spec.audio_n_fft, dtype=np.float32)
        padded[: waveform.shape[0]] = np.asarray(waveform, dtype=np.float32)
        starts = np.arange(frames)[:, None] * spec.audio_hop + np.arange(spec.audio_n_fft)[None, :]
        window = np.hanning(spec.audio_n_fft + 1)[:-1].astype(np.float32)
        power = np.abs(np.fft.rfft(padded[starts] * window, axis=-1)) ** 2
        log_mel = np.log(np.maximum(power @ self._mel_filters.T, 1e-10))
        log_mel = (log_mel - log_mel.mean()) / (log_mel.std() + 1e-5)
        tokens = log_mel.reshape(frames // spec.audio_frames_per_token, -1).astype(np.float32)
        return np.ascontiguousarray(
            tokens @ self._audio_projection * np.float32(spec.init_std), dtype=np.float32
        )

    # -- prefill ---------------------------------------------------------------------------------------------
    def prefill(self, request: PrefillRequest) -> PrefillResult:
        result, _ = self._prefill(request, export=True)
        return result

    def _prefill(self, request: PrefillRequest, *, export: bool) -> tuple[PrefillResult, Any]:
        prompt, sampling = request.prompt, request.sampling
        length = len(prompt)
        if length == 0:
            raise InvalidEngineInputError("the prompt is empty", param="prompt")
        if length + sampling.max_tokens > self.spec.max_position_embeddings:
            raise PromptTooLongError(
                f"{length} prompt tokens + max_tokens {sampling.max_tokens} exceed the context of "
                f"{self.spec.max_position_embeddings}",
                param="max_tokens",
            )
        self._check_items(prompt, request.items)
        sampler = TokenSampler(sampling, self.vocab_size, prompt.token_ids)
        ids = torch.tensor([prompt.token_ids], dtype=torch.long)
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(ids)
            for item in request.items:
                embeds[0, item.span.offset : item.span.end] = _tensor(item.embeddings.array())
            mrope, delta = self._mrope_positions(ids, request.items)
            text_positions = torch.arange(length, dtype=torch.long).view(1, 1, -1)
            cache = DynamicCache(config=self.model.config)
            out = self.model(
                inputs_embeds=embeds,
                position_ids=torch.cat([text_positions, mrope], dim=0),
                attention_mask=torch.ones((1, length), dtype=torch.long),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            first = sampler.sample(out.logits[0, -1], step=0)
        kv, layout = self.export_kv(cache) if export else (None, None)
        return PrefillResult(length, first, delta, kv, layout, prompt_token_ids=prompt.token_ids), cache

    def _check_items(self, prompt: RenderedPrompt, items: Sequence[EncodedItem]) -> None:
        if len(items) != len(prompt.spans):
            raise InvalidEngineInputError(
                f"{len(prompt.spans)} placeholders but {len(items)} encoded items", param="messages"
            )
        for span, item in zip(prompt.spans, items, strict=True):
            if item.span != span:
                raise InvalidEngineInputError(
                    f"encoded item for {item.span} does not fill {span}", param="messages"
                )
            if (
                item.embeddings.shape != (span.length, self.spec.hidden_size)
                or item.embeddings.dtype != "float32"
            ):
                raise InvalidEngineInputError(
                    f"embeddings {item.embeddings.shape} {item.embeddings.dtype} do not fit the model",
                    param="messages",
                )

    def _mrope_positions(self, ids: torch.Tensor, items: Sequence[EncodedItem]) -> tuple[torch.Tensor, int]:
        """Qwen2-VL's 3-row positions via the model's ``get_rope_index``; text-only prompts get 0..L-1."""
        vision = [item for item in items if item.grid_thw is not None]
        if not vision:
            return torch.arange(ids.shape[1], dtype=torch.long).view(1, 1, -1).expand(3, 1, -1), 0
        token_types = torch.zeros_like(ids)
        for item in vision:
            token_types[0, item.span.offset : item.span.end] = 1 if item.modality == "image" else 2
        image_grids = [item.grid_thw for item in vision if item.modality == "image"]
        video_grids = [item.grid_thw for item in vision if item.modality == "video"]
        positions, deltas = self.model.model.get_rope_index(
            ids,
            mm_token_type_ids=token_types,
            image_grid_thw=torch.tensor(image_grids, dtype=torch.long) if image_grids else None,
            video_grid_thw=torch.tensor(video_grids, dtype=torch.long) if video_grids else None,
        )
        return positions, int(deltas.reshape(-1)[0])

    # -- KV export / import ----------------------------------------------------------------------------------
    def export_kv(self, cache: Any) -> tuple[TensorBuffer, KVLayout]:
        """The whole cache as one contiguous ``[layer, 2, kv_head, token, head_dim]`` float32 buffer."""
        layers = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]
        stacked = torch.stack(layers).contiguous()
        num_layers, _, heads, tokens, head_dim = stacked.shape
        return TensorBuffer.from_array(stacked.numpy()), KVLayout(
            num_layers, heads, head_dim, tokens, _KV_ORDER
        )

    def import_kv(self, kv: TensorBuffer, layout: KVLayout) -> Any:
        """A ``DynamicCache`` over the buffer (zero-copy where the buffer is writable)."""
        num_layers, heads, head_dim = self.kv_dims
        expected = (num_layers, 2, heads, layout.num_tokens, head_dim)
        if layout.order != _KV_ORDER or kv.shape != expected or kv.dtype != "float32":
            raise InvalidEngineInputError(
                f"KV {kv.shape} {kv.dtype} {layout.order} does not fit {expected}", param="kv"
            )
        tensor = _tensor(kv.array())
        cache = DynamicCache(config=self.model.config)
        for index in range(num_layers):
            cache.update(tensor[index, 0].unsqueeze(0), tensor[index, 1].unsqueeze(0), index)
        return cache

    # -- decode ----------------------------------------------------------------------------------------------
    def decode(self, request: DecodeRequest) -> Generator[DecodeStep, None, None]:
        prefill = request.prefill
        if prefill.kv is None or prefill.kv_layout is None:
            raise InvalidEngineInputError("the reference engine needs the KV buffer itself", param="kv")
        if prefill.kv_layout.num_tokens != prefill.prompt_len:
            raise InvalidEngineInputError("KV length differs from the prompt length", param="kv")
        if len(prefill.prompt_token_ids) != prefill.prompt_len:
            raise EngineError(
                f"the prefill result carries {len(prefill.prompt_token_ids)} prompt ids for a prompt of "
                f"{prefill.prompt_len} tokens (the penalties need them)"
            )
        cache = self.import_kv(prefill.kv, prefill.kv_layout)
        return self._continue(cache, prefill, request.sampling)

    def generate(
        self, prompt: RenderedPrompt, items: Sequence[EncodedItem], sampling: SamplingParams
    ) -> Generator[DecodeStep, None, None]:
        """The aggregated path: prefill and decode with the cache object kept in memory (no export)."""
        result, cache = self._prefill(PrefillRequest(prompt, tuple(items), sampling), export=False)
        return self._continue(cache, result, sampling)

    def _continue(
        self, cache: Any, prefill: PrefillResult, sampling: SamplingParams
    ) -> Generator[DecodeStep, None, None]:
        detokenizer = self.prompter.new_detokenizer(sampling.stop)
        sampler = TokenSampler(sampling, self.vocab_size, prefill.prompt_token_ids, (prefill.first_token,))
        token, step = prefill.first_token, 0
        while True:
            delta = detokenizer.push(token)
            text = delta.text
            finish: FinishReason | None = None
            if delta.stopped or (not sampling.ignore_eos and token in self.info.eos_token_ids):
                finish = "stop"
            elif step + 1 >= sampling.max_tokens or prefill.prompt_len + step + 1 >= self.info.max_model_len:
                finish = "length"
            if finish is not None and not delta.stopped:
                text += detokenizer.flush().text
            yield DecodeStep(step, token, text, finish)
            if finish is not None:
                return
            position = prefill.prompt_len + step
            with torch.inference_mode():
                mrope = torch.full((3, 1, 1), position + prefill.position_delta, dtype=torch.long)
                out = self.model(
                    input_ids=torch.tensor([[token]], dtype=torch.long),
                    position_ids=torch.cat([torch.full((1, 1, 1), position, dtype=torch.long), mrope]),
                    attention_mask=torch.ones((1, position + 1), dtype=torch.long),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                step += 1
                token = sampler.sample(out.logits[0, -1], step=step)
            sampler.accept(token)


class TokenSampler:
    """One request's sampling at one stage: ``SamplingParams`` applied with vLLM's order and semantics (see
    its docstring) over the request's token history, which the caller hands over (``prompt_ids``, the
    tokens generated before this stage) and extends (``accept``) as it goes."""

    def __init__(
        self,
        sampling: SamplingParams,
        vocab_size: int,
        prompt_ids: Sequence[int],
        generated: Sequence[int] = (),
    ) -> None:
        if outside := sorted(t for t, _ in sampling.logit_bias if t >= vocab_size):
            raise InvalidEngineInputError(
                f"logit_bias names token ids outside the vocabulary of {vocab_size}: {outside[:8]}",
                param="logit_bias",
            )
        self.sampling = sampling
        self._vocab_size = vocab_size
        self._bias_ids = torch.tensor([t for t, _ in sampling.logit_bias], dtype=torch.long)
        self._bias = torch.tensor([b for _, b in sampling.logit_bias], dtype=torch.float32)
        self._counts = torch.zeros(vocab_size, dtype=torch.float32)  # occurrences in the output so far
        self._seen = torch.zeros(vocab_size, dtype=torch.bool)  # in the prompt or the output so far
        self._seen[torch.tensor(list(prompt_ids), dtype=torch.long)] = True
        for token in generated:
            self.accept(token)

    def accept(self, token: int) -> None:
        """Adds a generated token to the history the penalties look at."""
        self._counts[token] += 1
        self._seen[token] = True

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits after the bias and the penalties (the same tensor when none applies)."""
        s = self.sampling
        if not (s.logit_bias or s.repetition_penalty != 1.0 or s.frequency_penalty or s.presence_penalty):
            return logits
        out = logits.float().clone()
        out.index_add_(0, self._bias_ids, self._bias)
        if s.repetition_penalty != 1.0:
            penalised = torch.where(out > 0, out / s.repetition_penalty, out * s.repetition_penalty)
            out = torch.where(self._seen, penalised, out)
        out -= s.frequency_penalty * self._counts
        out -= s.presence_penalty * (self._counts > 0).float()
        return out

    def sample(self, logits: torch.Tensor, *, step: int) -> int:
        s = self.sampling
        logits = self.adjusted(logits)
        if s.greedy:
            return int(torch.argmax(logits).item())
        seed = secrets.randbits(63) if s.seed is None else (s.seed * 1_000_003 + step) % (1 << 63)
        generator = torch.Generator().manual_seed(seed)
        scaled = logits.float() / s.temperature
        if s.min_p > 0:
            probs = torch.softmax(scaled, dim=-1)
            scaled = scaled.masked_fill(probs < s.min_p * probs.max(), -math.inf)
        if 0 < s.top_k < self._vocab_size:
            kth = torch.topk(scaled, s.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, -math.inf)
        probs = torch.softmax(scaled, dim=-1)
        if s.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < s.top_p  # always keeps the first
            sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
            choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
            return int(order[choice].item())
        return int(torch.multinomial(probs, 1, generator=generator).item())


class ReferenceEngine:
    """The async ``Engine`` over ``ReferenceModel``: every model call runs on its one worker thread."""

    def __init__(self, model: ReferenceModel) -> None:
        self._model = model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference-engine")

    @classmethod
    async def load(cls, model_dir: Path, *, num_threads: int | None = None) -> ReferenceEngine:
        """Loads the model off the event loop."""
        model = await asyncio.to_thread(ReferenceModel, model_dir, num_threads=num_threads)
        return cls(model)

    @property
    def info(self) -> EngineInfo:
        return self._model.info

    @property
    def prompter(self) -> ReferencePrompter:
        """The model's prompt renderer (what the frontend renders with; tests render through it)."""
        return self._model.prompter

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def encode(self, requests: Sequence[EncodeRequest]) -> list[EncodedItem]:
        result: list[EncodedItem] = await self._run(self._model.encode, requests)
        return result

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        result: PrefillResult = await self._run(self._model.prefill, request)
        return result

    def decode(self, request: DecodeRequest) -> AsyncGenerator[TokenFrame, None]:
        return self._stream(self._model.decode, request)

    def generate(
        self, prompt: RenderedPrompt, items: Sequence[EncodedItem], sampling: SamplingParams
    ) -> AsyncGenerator[TokenFrame, None]:
        return self._stream(self._model.generate, prompt, items, sampling)

    async def _stream(self, start: Any, *args: Any) -> AsyncGenerator[TokenFrame, None]:
        """One token per hop to the engine thread: the requests a worker runs at once take turns on it
        token by token (interleaved, each with its own KV), and leaving stops this one at the next token."""
        steps: Generator[DecodeStep, None, None] = await self._run(start, *args)
        try:
            while (step := await self._run(next, steps, None)) is not None:
                yield TokenFrame.of(step)
        finally:
            await self._run(steps.close)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)


def _tensor(array: npt.NDArray[Any]) -> torch.Tensor:
    """A tensor over ``array``; received buffers are read-only, and torch only views writable memory."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _rgb(array: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InvalidEngineInputError("images and frames must be HxWx3 uint8 RGB arrays", param="messages")
    return np.ascontiguousarray(array)
