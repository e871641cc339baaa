"""The reference engine: model directory written once, split == aggregated == transformers' generate.

The key test sends the same greedy request (text only, text + image, text + video) through
(a) encode -> prefill -> KV exported to bytes -> KV imported from bytes -> decode,
(b) the aggregated path (prefill and decode sharing the in-memory cache), and
(c) a plain ``model.generate`` on the same weights with the same processor outputs,
and requires identical token ids. All on CPU with the tiny model; the module loads it once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from triptych_workers.engines.base import Engine  # noqa: E402
from triptych_workers.engines.errors import EngineError, InvalidEngineInputError, ModelDirError  # noqa: E402
from triptych_workers.engines.kv import DecodeRequest, PrefillRequest, PrefillResult  # noqa: E402
from triptych_workers.engines.media import EncodedItem, EncodeRequest, MediaItem, RenderedPrompt  # noqa: E402
from triptych_workers.engines.reference import prepare  # noqa: E402
from triptych_workers.engines.reference.engine import (  # noqa: E402
    ReferenceEngine,
    ReferenceModel,
    TokenSampler,
)
from triptych_workers.engines.reference.model_dir import prepare_model  # noqa: E402
from triptych_workers.engines.reference.spec import MANIFEST, ReferenceSpec, default_model_dir  # noqa: E402
from triptych_workers.engines.sampling import DecodeStep, SamplingParams, TokenFrame  # noqa: E402
from triptych_workers.engines.tensors import TensorBuffer  # noqa: E402
from triptych_workers.engines.text import IncrementalDetokenizer  # noqa: E402

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield prepare_model(tmp_path_factory.mktemp("models") / "reference")


@pytest.fixture(scope="module")
def model(model_dir: Path) -> ReferenceModel:
    return ReferenceModel(model_dir)


def _image() -> MediaItem:
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (90, 60), (30, 120, 200))
    ImageDraw.Draw(picture).ellipse((20, 10, 70, 50), fill=(250, 200, 20))
    return MediaItem("image", "a" * 64, np.asarray(picture))


def _video() -> MediaItem:
    frames = np.zeros((5, 40, 56, 3), dtype=np.uint8)
    for t in range(5):  # a bright square moving right over a gradient
        frames[t, :, :, 0] = np.linspace(0, 255, 56, dtype=np.uint8)[None, :]
        frames[t, 10:26, 6 + 8 * t : 22 + 8 * t] = 255
    return MediaItem("video", "b" * 64, frames)


def _audio() -> MediaItem:
    t = np.arange(12_000, dtype=np.float32) / 16_000
    return MediaItem("audio", "c" * 64, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)


def _chat(kind: str, text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": text}]}]


CASES: dict[str, tuple[list[dict[str, Any]], list[MediaItem]]] = {
    "text": ([{"role": "user", "content": "Describe the cat on the red mat."}], []),
    "image": (_chat("image", "Describe the image."), [_image()]),
    "video": (_chat("video", "What happens?"), [_video()]),
    "audio": (_chat("audio", "Transcribe."), [_audio()]),
}


def _encode(model: ReferenceModel, case: str) -> tuple[RenderedPrompt, list[EncodedItem]]:
    messages, media = CASES[case]
    prompt = model.prompter.render_chat(messages, media)
    return prompt, model.encode(
        [EncodeRequest(item, span) for item, span in zip(media, prompt.spans, strict=True)]
    )


def _over_the_wire(result: PrefillResult) -> PrefillResult:
    """What the decode side rebuilds from the bytes and metadata it received."""
    assert result.kv is not None
    payload = bytes(result.kv.tobytes())
    return replace(result, kv=TensorBuffer.from_bytes(payload, result.kv.shape, result.kv.dtype))


def _split(model: ReferenceModel, case: str, sampling: SamplingParams) -> list[DecodeStep]:
    prompt, items = _encode(model, case)
    # Embeddings travel as bytes too (encode -> prefill).
    items = [
        replace(
            i,
            embeddings=TensorBuffer.from_bytes(
                i.embeddings.tobytes(), i.embeddings.shape, i.embeddings.dtype
            ),
        )
        for i in items
    ]
    result = model.prefill(PrefillRequest(prompt, tuple(items), sampling))
    return list(model.decode(DecodeRequest(_over_the_wire(result), sampling)))


def _aggregated(model: ReferenceModel, case: str, sampling: SamplingParams) -> list[DecodeStep]:
    prompt, items = _encode(model, case)
    return list(model.generate(prompt, items, sampling))


def _hf_generate(model: ReferenceModel, case: str, max_new_tokens: int) -> list[int]:
    """Plain transformers: input ids + processor outputs (pixel values, grids, token types) into generate."""
    messages, media = CASES[case]
    prompt = model.prompter.render_chat(messages, media)
    ids = torch.tensor([prompt.token_ids])
    token_types = torch.zeros_like(ids)
    kwargs: dict[str, Any] = {}
    for item, span in zip(media, prompt.spans, strict=True):
        pixels, grid = model.vision_inputs(item)
        if item.modality == "image":
            token_types[0, span.offset : span.end] = 1
            kwargs.update(pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.tensor([grid]))
        else:
            token_types[0, span.offset : span.end] = 2
            kwargs.update(pixel_values_videos=torch.from_numpy(pixels), video_grid_thw=torch.tensor([grid]))
    out = model.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=token_types,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        **kwargs,
    )
    return [int(t) for t in out[0, ids.shape[1] :]]


def _ids(steps: Sequence[DecodeStep]) -> list[int]:
    return [s.token_id for s in steps]


# -- the key property ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["text", "image", "video"])
def test_split_aggregated_and_generate_give_the_same_tokens(model: ReferenceModel, case: str) -> None:
    greedy = SamplingParams(max_tokens=MAX_TOKENS)
    split = _split(model, case, greedy)
    aggregated = _aggregated(model, case, greedy)
    reference = _hf_generate(model, case, MAX_TOKENS)
    assert _ids(split) == _ids(aggregated) == reference
    assert [s.text for s in split] == [s.text for s in aggregated]
    assert "".join(s.text for s in split) == model.prompter.detokenize(reference)
    assert split[-1].finish_reason in {"stop", "length"}
    assert all(s.finish_reason is None for s in split[:-1])


def test_audio_split_matches_aggregated(model: ReferenceModel) -> None:
    greedy = SamplingParams(max_tokens=MAX_TOKENS)
    prompt, items = _encode(model, "audio")
    assert [s.length for s in prompt.spans] == [19]  # 0.75 s at 25 tokens per second, rounded up
    assert items[0].grid_thw is None
    assert items[0].embeddings.shape == (19, model.spec.hidden_size)
    assert _ids(_split(model, "audio", greedy)) == _ids(_aggregated(model, "audio", greedy))


def test_vision_placeholders_and_positions_follow_qwen2_vl(model: ReferenceModel) -> None:
    prompt, items = _encode(model, "video")
    (item,) = items
    # 5 frames padded to 6 -> 3 temporal patches; 40x56 is below min_pixels, so smart_resize scales it up to
    # 56x84 -> 4x6 patches of 14; 2x2 patches merge into one token.
    assert item.grid_thw == (3, 4, 6)
    assert item.span.length == 3 * 4 * 6 // 4
    assert prompt.token_ids[item.span.offset - 1] == model.prompter.token_ids["vision_start"]
    result = model.prefill(PrefillRequest(prompt, tuple(items), SamplingParams(max_tokens=1)))
    # mrope: the 18 video tokens advance the position by max(h, w) / merge = 3 instead of 18.
    assert result.position_delta == 3 - 18


# -- KV transport ------------------------------------------------------------------------------------------
def test_kv_export_import_round_trips_exactly(model: ReferenceModel) -> None:
    prompt, items = _encode(model, "image")
    result = model.prefill(PrefillRequest(prompt, tuple(items), SamplingParams(max_tokens=1)))
    assert result.kv is not None
    assert result.kv_layout is not None
    layout = result.kv_layout
    assert result.kv.shape == (layout.num_layers, 2, layout.num_kv_heads, len(prompt), layout.head_dim)
    assert result.kv.dtype == "float32"
    assert result.kv.data.flags.c_contiguous
    wire = _over_the_wire(result)
    assert wire.kv is not None
    cache = model.import_kv(wire.kv, layout)
    again, again_layout = model.export_kv(cache)
    assert again_layout == layout
    assert again.tobytes() == result.kv.tobytes()
    assert cache.get_seq_length() == len(prompt)


def test_kv_of_the_wrong_shape_is_refused(model: ReferenceModel) -> None:
    prompt, items = _encode(model, "text")
    result = model.prefill(PrefillRequest(prompt, tuple(items), SamplingParams(max_tokens=1)))
    assert result.kv_layout is not None
    bad_layout = replace(result.kv_layout, num_tokens=result.kv_layout.num_tokens + 1)
    with pytest.raises(InvalidEngineInputError):
        list(model.decode(DecodeRequest(replace(result, kv_layout=bad_layout), SamplingParams())))


# -- sampling, stop strings, limits -------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible_across_the_split(model: ReferenceModel) -> None:
    sampling = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    first = _ids(_split(model, "image", sampling))
    assert first == _ids(_split(model, "image", sampling))
    assert first == _ids(_aggregated(model, "image", sampling))
    other = _ids(_split(model, "image", replace(sampling, seed=8)))
    assert other != first
    assert first != _ids(_aggregated(model, "image", SamplingParams(max_tokens=16, ignore_eos=True)))


def test_top_p_near_zero_is_greedy(model: ReferenceModel) -> None:
    sampling = SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=3)
    assert _ids(_aggregated(model, "text", sampling)) == _ids(
        _aggregated(model, "text", SamplingParams(max_tokens=12))
    )


def test_stop_string_cuts_the_output(model: ReferenceModel) -> None:
    free = _aggregated(model, "text", SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    text = "".join(s.text for s in free)
    stop = text[6:9]
    assert len(stop) == 3
    cut = text.find(stop)
    steps = _split(model, "text", SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, stop=(stop,)))
    assert "".join(s.text for s in steps) == text[:cut]
    assert steps[-1].finish_reason == "stop"
    assert len(steps) < len(free)
    assert _ids(steps) == _ids(free)[: len(steps)]


# Every parameter with vLLM's semantics, checked where it must change the greedy (or seeded) answer, where
# a neutral value must not, and on the split path (prefill samples the first token, decode the rest, with
# the history carried over) as well as the aggregated one.
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
SAMPLED = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=5, ignore_eos=True)


def _both(model: ReferenceModel, sampling: SamplingParams) -> list[int]:
    """The text case's tokens, the same on the split and the aggregated path."""
    split = _ids(_split(model, "text", sampling))
    assert split == _ids(_aggregated(model, "text", sampling))
    return split


def test_penalties_and_bias_follow_vllms_formulas() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, 1.0, -0.5, 3.0])
    sampling = SamplingParams(
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        logit_bias=((3, 1.5), (5, -4.0)),
    )
    sampler = TokenSampler(sampling, 6, prompt_ids=[0, 4], generated=[1, 1, 2])
    # bias:       [2, -1, 0.5, 2.5, -0.5, -1]
    # repetition on 0, 4 (prompt), 1, 2 (output): positive / 2, negative * 2 -> [1, -2, .25, 2.5, -1, -1]
    # frequency:  0.5 x counts [0, 2, 1, 0, 0, 0]; presence: 0.25 x [0, 1, 1, 0, 0, 0]
    assert sampler.adjusted(logits).tolist() == [1.0, -3.25, -0.5, 2.5, -1.0, -1.0]
    sampler.accept(5)  # now in the output once: -1 * 2 - 0.5 - 0.25
    assert sampler.adjusted(logits).tolist() == [1.0, -3.25, -0.5, 2.5, -1.0, -2.75]


def test_logit_bias_forces_and_bans_tokens(model: ReferenceModel) -> None:
    greedy = _both(model, GREEDY)
    forced = next(t for t in range(model.vocab_size) if t not in greedy)
    assert _both(model, replace(GREEDY, logit_bias=((forced, 100.0),))) == [forced] * MAX_TOKENS
    assert greedy[0] not in _both(model, replace(GREEDY, logit_bias=((greedy[0], -100.0),)))
    assert _both(model, replace(GREEDY, logit_bias=((forced, 0.0),))) == greedy


def test_logit_bias_outside_the_vocabulary_is_a_400(model: ReferenceModel) -> None:
    prompt, items = _encode(model, "text")
    for token_id in (model.vocab_size, 10**9):
        with pytest.raises(InvalidEngineInputError) as caught:
            model.prefill(
                PrefillRequest(prompt, tuple(items), replace(GREEDY, logit_bias=((token_id, 1.0),)))
            )
        assert caught.value.param == "logit_bias"
    last = replace(GREEDY, max_tokens=1, logit_bias=((model.vocab_size - 1, 100.0),))
    assert model.prefill(PrefillRequest(prompt, tuple(items), last)).first_token == model.vocab_size - 1


def test_repetition_penalty_stops_the_greedy_answer_repeating(model: ReferenceModel) -> None:
    """Without it the greedy answer repeats its own tokens and one of the prompt's; a huge penalty leaves
    only tokens seen nowhere before (decode sees the prompt's ids and the first token, carried over)."""
    prompt = set(model.prompter.render_chat(CASES["text"][0], []).token_ids)
    greedy = _both(model, GREEDY)
    assert len(set(greedy)) < len(greedy)
    assert set(greedy[1:]) & prompt
    penalised = _both(model, replace(GREEDY, repetition_penalty=1e4))
    assert len(set(penalised)) == len(penalised)
    assert not set(penalised) & prompt
    assert _both(model, replace(GREEDY, repetition_penalty=1.0)) == greedy


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_presence_and_frequency_penalties_curb_the_greedy_repeats(
    model: ReferenceModel, penalty: str
) -> None:
    greedy = _both(model, GREEDY)
    penalised = _both(model, replace(GREEDY, **{penalty: 2.0}))  # type: ignore[arg-type]
    assert penalised[0] == greedy[0]  # the first token has no output history: the prompt is not penalised
    assert len(penalised) - len(set(penalised)) < len(greedy) - len(set(greedy))
    assert _both(model, replace(GREEDY, **{penalty: 0.0})) == greedy  # type: ignore[arg-type]


def test_decode_penalises_the_token_prefill_chose(model: ReferenceModel) -> None:
    """The greedy text answer repeats a token at once (``t t``). Prompted with the answer up to it, prefill
    picks ``t`` and, unpenalised, decode picks it again; with the penalty decode must not, which it can only
    know from the first token handed over by prefill (``t`` is not in the prompt)."""
    prompt = model.prompter.render_chat(CASES["text"][0], [])
    greedy = _both(model, GREEDY)
    at = next(i for i in range(len(greedy) - 1) if greedy[i] == greedy[i + 1])
    repeated = greedy[at]
    lead = RenderedPrompt(prompt.token_ids + tuple(greedy[:at]))
    assert repeated not in lead.token_ids

    def first_two(sampling: SamplingParams) -> list[int]:
        result = _over_the_wire(model.prefill(PrefillRequest(lead, (), replace(sampling, max_tokens=2))))
        return _ids(list(model.decode(DecodeRequest(result, replace(sampling, max_tokens=2)))))

    assert first_two(GREEDY) == [repeated, repeated]
    penalised = first_two(replace(GREEDY, repetition_penalty=1e4))
    assert penalised[0] == repeated
    assert penalised[1] != repeated


def test_decode_refuses_a_prefill_result_without_the_prompt_ids(model: ReferenceModel) -> None:
    prompt, items = _encode(model, "text")
    result = _over_the_wire(model.prefill(PrefillRequest(prompt, tuple(items), GREEDY)))
    with pytest.raises(EngineError, match="prompt ids"):
        model.decode(DecodeRequest(replace(result, prompt_token_ids=()), GREEDY))


@pytest.mark.parametrize("narrowing", [{"top_k": 1}, {"min_p": 1.0}])
def test_top_k_1_and_min_p_1_sample_the_greedy_answer(
    model: ReferenceModel, narrowing: dict[str, Any]
) -> None:
    greedy = _both(model, GREEDY)
    assert _both(model, SAMPLED) != greedy  # sampling alone wanders off
    assert _both(model, replace(SAMPLED, **narrowing)) == greedy


@pytest.mark.parametrize("neutral", [{"top_k": 0}, {"top_k": 512}, {"min_p": 1e-6}])
def test_filters_that_keep_every_token_leave_sampling_unchanged(
    model: ReferenceModel, neutral: dict[str, Any]
) -> None:
    """top_k 0 (vLLM's "all"), top_k of the whole vocabulary, a min_p below every token's relative
    probability in this model."""
    assert model.vocab_size == 512
    assert _both(model, replace(SAMPLED, **neutral)) == _both(model, SAMPLED)


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_max_tokens_is_respected(model: ReferenceModel, max_tokens: int) -> None:
    steps = _split(model, "image", SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    assert len(steps) == max_tokens
    assert steps[-1].finish_reason == "length"
    assert [s.index for s in steps] == list(range(max_tokens))


def test_eos_stops_generation(model: ReferenceModel) -> None:
    prompt, items = _encode(model, "text")
    result = model.prefill(PrefillRequest(prompt, tuple(items), SamplingParams(max_tokens=1)))
    eos = model.prompter.token_ids["im_end"]
    steps = list(
        model.decode(DecodeRequest(replace(_over_the_wire(result), first_token=eos), SamplingParams()))
    )
    assert [(s.token_id, s.text, s.finish_reason) for s in steps] == [(eos, "", "stop")]


# -- rendering ----------------------------------------------------------------------------------------------
def test_placeholders_must_match_media(model: ReferenceModel) -> None:
    messages, media = CASES["image"]
    with pytest.raises(InvalidEngineInputError):
        model.prompter.render_chat(messages, [])
    with pytest.raises(InvalidEngineInputError):
        model.prompter.render_chat(messages, [*media, _image()])
    with pytest.raises(InvalidEngineInputError):
        model.prompter.render_chat(messages, [_video()])
    with pytest.raises(InvalidEngineInputError):
        model.prompter.render_chat(CASES["audio"][0], [replace(_audio(), sample_rate=44_100)])


def test_chat_template_and_tokenizer_match_transformers(model_dir: Path, model: ReferenceModel) -> None:
    from transformers import AutoTokenizer

    tokenizer: Any = cast(Any, AutoTokenizer).from_pretrained(str(model_dir))
    for messages, _ in CASES.values():
        ours = model.prompter.apply_chat_template(messages)
        assert ours == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert (
            list(model.prompter.tokenizer.encode(ours, add_special_tokens=False).ids)
            == tokenizer(ours).input_ids
        )


def test_processor_loads_offline_with_auto_processor(model_dir: Path, model: ReferenceModel) -> None:
    pytest.importorskip("torchvision", reason="transformers' Qwen2-VL processor needs torchvision")
    from transformers import AutoProcessor

    processor: Any = cast(Any, AutoProcessor).from_pretrained(str(model_dir))
    messages, media = CASES["image"]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    features = processor(text=[text], images=[media[0].data], return_tensors="np")
    assert [int(t) for t in features["input_ids"][0]] == list(
        model.prompter.render_chat(messages, media).token_ids
    )


# -- the model directory ------------------------------------------------------------------------------------
def test_model_dir_is_written_once_and_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRIPTYCH_MODEL_CACHE", str(tmp_path))
    assert prepare.main([]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == default_model_dir(ReferenceSpec())
    assert path.parent == tmp_path
    stamps = {p.name: p.stat().st_mtime_ns for p in [path, *path.iterdir()]}
    assert prepare.main(["--out", str(path)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in [path, *path.iterdir()]} == stamps
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary directory left behind
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["digest"] == ReferenceSpec().digest()


def test_fixed_seed_gives_identical_files(tmp_path: Path, model_dir: Path) -> None:
    again = prepare_model(tmp_path / "again")
    assert (
        json.loads((again / MANIFEST).read_text())["sha256"]
        == json.loads((model_dir / MANIFEST).read_text())["sha256"]
    )


def test_directory_of_another_spec_is_refused(model_dir: Path) -> None:
    with pytest.raises(ModelDirError):
        prepare_model(model_dir, ReferenceSpec(seed=1))
    with pytest.raises(ModelDirError):
        prepare_model(model_dir.parent)  # exists but is no model directory


# -- the async engine ---------------------------------------------------------------------------------------
async def test_async_engine_streams_the_same_tokens_and_stops_when_left(model: ReferenceModel) -> None:
    engine = ReferenceEngine(model)
    assert isinstance(engine, Engine)
    try:
        messages, media = CASES["image"]
        prompt = engine.prompter.render_chat(messages, media)
        items = await engine.encode([EncodeRequest(media[0], prompt.spans[0])])
        greedy = SamplingParams(max_tokens=MAX_TOKENS)
        result = await engine.prefill(PrefillRequest(prompt, tuple(items), greedy))
        streamed = [f async for f in engine.decode(DecodeRequest(_over_the_wire(result), greedy))]
        # One token per frame: the engine thread takes the requests it runs at once in turns, token by token.
        assert [len(f) for f in streamed] == [1] * len(streamed)
        assert [t for f in streamed for t in f.token_ids] == _hf_generate(model, "image", MAX_TOKENS)
        taken: list[TokenFrame] = []
        stream = engine.generate(prompt, items, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
        async for frame in stream:
            taken.append(frame)
            if len(taken) == 2:
                break
        await asyncio.wait_for(stream.aclose(), timeout=10)
        assert [f.token_ids for f in taken] == [f.token_ids for f in streamed[:2]]
    finally:
        await engine.aclose()


# -- pieces
# ---------------------------------------------------------------------------------------------------
def test_detokenizer_holds_partial_utf8_and_stop_prefixes() -> None:
    pieces = {1: b"caf", 2: b"\xc3", 3: b"\xa9 ", 4: b"EN", 5: b"D!", 6: b" more"}

    def decode(ids: Sequence[int]) -> str:
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    plain = IncrementalDetokenizer(decode)
    assert [plain.push(i).text for i in (1, 2, 3)] == ["caf", "", "\u00e9 "]
    stopping = IncrementalDetokenizer(decode, stop=("END",))
    deltas = [stopping.push(i) for i in (1, 2, 3, 4, 5)]
    assert "".join(d.text for d in deltas) == "caf\u00e9 "
    assert deltas[-1].stopped
    assert stopping.stopped
    flushed = IncrementalDetokenizer(decode, stop=("ENDX",))
    text = "".join(flushed.push(i).text for i in (1, 2, 3, 4)) + flushed.flush().text
    assert text == "caf\u00e9 EN"


def test_tensor_buffer_round_trip_and_validation() -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    buffer = TensorBuffer.from_array(array[:, ::-1])  # non-contiguous input is copied
    rebuilt = TensorBuffer.from_bytes(buffer.tobytes(), buffer.shape, buffer.dtype)
    np.testing.assert_array_equal(rebuilt.array(), array[:, ::-1])
    with pytest.raises(ValueError, match="does not hold"):
        TensorBuffer.from_bytes(buffer.tobytes()[:-4], buffer.shape, buffer.dtype)
    with pytest.raises(InvalidEngineInputError):
        SamplingParams(top_p=0)
