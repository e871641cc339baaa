"""The processor renderer (``engines.renderer``) on every architecture of the builtin matrix.

What a rendered prompt must be is asked of the model's own processor, called here on the whole prompt with
real pixels, frames or samples (the renderer only ever gives it a blank item of each geometry, one at a
time): the same token ids, and each item's span as long as the processor's own replacement for it. Folding
each span back to its placeholder must give the chat template's text as the tokenizer tokenizes it, which
is what vLLM is sent and expands again. Architectures, modalities and templates the renderer cannot handle
are refused when it is built, naming them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from triptych_contract import Modality  # noqa: E402
from triptych_workers.config import ConfigError, WorkerConfig  # noqa: E402
from triptych_workers.engines.builtin.catalog import BUILTINS, REFERENCE  # noqa: E402
from triptych_workers.engines.builtin.writer import write_builtin  # noqa: E402
from triptych_workers.engines.errors import InvalidEngineInputError  # noqa: E402
from triptych_workers.engines.media import MediaItem, RenderedPrompt  # noqa: E402
from triptych_workers.engines.reference.model_dir import prepare_model  # noqa: E402
from triptych_workers.engines.registry import lookup_backend  # noqa: E402
from triptych_workers.engines.renderer import (  # noqa: E402
    ARCHITECTURES,
    ProcessorRenderer,
    UnsupportedArchitectureError,
)
from triptych_workers.engines.vllm.protocol import collapse_placeholders  # noqa: E402

from tests.media_factory import gradient_array, sine  # noqa: E402

# Several geometries per modality, chosen to move each processor's arithmetic: aspect ratios on either side
# of square, sizes below, inside and above the pixel budgets (so resizing up, down and, for Idefics3 and
# LLaVA-NeXT, tiling differ); videos of odd and even frame counts; audio shorter than a second and longer.
IMAGE_SIZES = [(28, 28), (40, 40), (123, 77), (77, 123), (300, 500), (640, 480)]  # (height, width)
VIDEO_SHAPES = [(1, 56, 56), (3, 64, 90), (8, 120, 60)]  # (frames, height, width)
AUDIO_SECONDS = [0.3, 1.0, 3.47, 12.0]

# Every architecture the renderer supports, with a modality of it: the builtin tiny models, one each.
CASES: list[tuple[str, Modality]] = [
    (name, modality) for name, builtin in sorted(BUILTINS.items()) for modality in builtin.modalities
]
PART: dict[Modality, dict[str, Any]] = {
    "image": {"type": "image_url", "image_url": {"url": "data:,"}},
    "video": {"type": "video_url", "video_url": {"url": "data:,"}},
    "audio": {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
}


def model_dir(name: str) -> Path:
    return prepare_model() if name == REFERENCE else write_builtin(name)


def item(modality: Modality, geometry: tuple[float, ...], seed: int) -> MediaItem:
    data: npt.NDArray[Any]
    if modality == "image":
        height, width = (int(g) for g in geometry)
        data = gradient_array(width, height, seed)
    elif modality == "video":
        frames, height, width = (int(g) for g in geometry)
        data = np.stack([gradient_array(width, height, seed + f) for f in range(frames)])
    else:
        data = sine(220.0 * (seed + 1), geometry[0], 16_000)
    return MediaItem(modality, f"hash-{seed}", data, 16_000 if modality == "audio" else None)


def geometries(modality: Modality) -> list[tuple[float, ...]]:
    if modality == "image":
        return [tuple(s) for s in IMAGE_SIZES]
    if modality == "video":
        return [tuple(s) for s in VIDEO_SHAPES]
    return [(s,) for s in AUDIO_SECONDS]


def processor_input(modality: Modality, items: list[MediaItem]) -> dict[str, Any]:
    """The items as the processor takes them: real pixels, frames or samples."""
    data = [i.data for i in items]
    if modality == "image":
        return {"images": data}
    if modality == "video":
        return {"videos": data}
    return {"audio": data, "sampling_rate": 16_000}


@pytest.fixture(scope="module")
def renderers() -> dict[tuple[str, Modality], tuple[ProcessorRenderer, Any]]:
    """A renderer per case, with the model's processor loaded independently (the one the tests ask)."""
    out = {}
    for name, modality in CASES:
        path = model_dir(name)
        out[name, modality] = (
            ProcessorRenderer(str(path), [modality]),
            transformers.AutoProcessor.from_pretrained(str(path)),
        )
    return out


def test_every_builtin_is_an_architecture_the_renderer_supports() -> None:
    for builtin in BUILTINS.values():
        assert builtin.architecture in ARCHITECTURES
        assert set(builtin.modalities) <= set(ARCHITECTURES[builtin.architecture])


@pytest.mark.parametrize(("name", "modality"), CASES)
def test_rendered_prompts_are_the_processors_on_every_geometry(
    renderers: dict[tuple[str, Modality], tuple[ProcessorRenderer, Any]], name: str, modality: Modality
) -> None:
    renderer, processor = renderers[name, modality]
    placeholder = processor.tokenizer.convert_tokens_to_ids(getattr(processor, f"{modality}_token"))
    shapes = geometries(modality)
    # Two items per prompt, of neighbouring geometries, around text: order and offsets matter.
    for seed, (first, second) in enumerate(zip(shapes, shapes[1:] + shapes[:1], strict=True)):
        items = [item(modality, first, seed), item(modality, second, seed + 1)]
        content = [PART[modality], {"type": "text", "text": "What is in it?"}, PART[modality]]
        prompt = renderer.render_chat([{"role": "user", "content": content}], items)

        conversation = [
            {
                "role": "user",
                "content": [
                    {"type": modality},
                    {"type": "text", "text": "What is in it?"},
                    {"type": modality},
                ],
            }
        ]
        text = processor.tokenizer.apply_chat_template(
            conversation, chat_template=processor.chat_template, tokenize=False, add_generation_prompt=True
        )
        expected = processor(
            text=[text],
            add_special_tokens=False,
            return_text_replacement_offsets=True,
            **processor_input(modality, items),
        )
        assert list(prompt.token_ids) == list(expected["input_ids"][0]), (name, first, second)
        replacements = expected["text_replacement_offsets"][0]
        assert [s.length for s in prompt.spans] == [
            len(processor.tokenizer.encode(r["replacement"], add_special_tokens=False)) for r in replacements
        ]
        # The embedding positions inside each span are as many as the processor's replacement holds.
        for span, replacement in zip(prompt.spans, replacements, strict=True):
            window = prompt.token_ids[span.offset : span.end]
            wanted = processor.tokenizer.encode(replacement["replacement"], add_special_tokens=False)
            assert window.count(placeholder) == wanted.count(placeholder) > 0
        assert [s.media_hash for s in prompt.spans] == [i.media_hash for i in items]
        assert {s.placeholder for s in prompt.spans} == {placeholder}
        # What vLLM is sent: each span folded back to its placeholder is the template's tokenized text.
        assert collapse_placeholders(prompt.token_ids, prompt.spans) == processor.tokenizer.encode(
            text, add_special_tokens=False
        )


def test_an_image_known_only_by_its_header_renders_as_its_pixels_do(
    renderers: dict[tuple[str, Modality], tuple[ProcessorRenderer, Any]],
) -> None:
    """The frontend usually holds the file as fetched and the shape its header gives, not the pixels."""
    renderer, _ = renderers["tiny-idefics3", "image"]
    decoded = item("image", (123, 77), 0)
    probed = MediaItem("image", decoded.media_hash, np.zeros(10, np.uint8), compressed_shape=(123, 77, 3))
    messages = [{"role": "user", "content": [PART["image"], {"type": "text", "text": "Hi"}]}]
    assert renderer.render_chat(messages, [probed]) == renderer.render_chat(messages, [decoded])


def test_media_and_placeholders_must_pair_up(
    renderers: dict[tuple[str, Modality], tuple[ProcessorRenderer, Any]],
) -> None:
    renderer, _ = renderers["tiny-qwen2.5-vl", "image"]
    image = item("image", (40, 40), 0)
    messages = [{"role": "user", "content": [PART["image"], {"type": "text", "text": "Hi"}]}]
    with pytest.raises(InvalidEngineInputError, match="more image placeholders than media"):
        renderer.render_chat(messages, [])
    with pytest.raises(InvalidEngineInputError, match="have no placeholder"):
        renderer.render_chat(messages, [image, image])
    video_renderer, _ = renderers["tiny-qwen2.5-vl", "video"]
    with pytest.raises(InvalidEngineInputError, match="met a image item"):
        video_renderer.render_chat([{"role": "user", "content": [PART["video"]]}], [image])


def test_audio_at_another_rate_is_refused(
    renderers: dict[tuple[str, Modality], tuple[ProcessorRenderer, Any]],
) -> None:
    renderer, _ = renderers["tiny-qwen2-audio", "audio"]
    clip = MediaItem("audio", "h", sine(440.0, 1.0, 44_100), 44_100)
    with pytest.raises(InvalidEngineInputError, match="16000 Hz, got 44100"):
        renderer.render_chat([{"role": "user", "content": [PART["audio"]]}], [clip])


def test_text_only_prompts_render_without_media(
    renderers: dict[tuple[str, Modality], tuple[ProcessorRenderer, Any]],
) -> None:
    renderer, processor = renderers["tiny-llava", "image"]
    prompt = renderer.render_chat([{"role": "user", "content": "Hello there"}], [])
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
        chat_template=processor.chat_template,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == RenderedPrompt(tuple(processor.tokenizer.encode(text, add_special_tokens=False)))
    assert renderer.render_text("Hello").token_ids == tuple(processor.tokenizer.encode("Hello"))


# -- refused at startup, naming what is not supported -------------------------------------------------------
def _vllm_config(model: Path, modalities: list[str]) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "deployment": "test",
            "namespace": "default",
            "backend": "vllm",
            "model": {"name": "m", "path": str(model)},
            "modalities": modalities,
        }
    )


@pytest.fixture(scope="module")
def text_only_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real text-only checkpoint (LlamaForCausalLM): an architecture with no multimodal processor."""
    out = tmp_path_factory.mktemp("llama")
    source = write_builtin("tiny-llava")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    tokenizer.save_pretrained(str(out))
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(str(out))
    return out


def test_an_unsupported_architecture_is_refused_at_startup_naming_it(text_only_model: Path) -> None:
    config = _vllm_config(text_only_model, ["image"])
    with pytest.raises(ConfigError, match="architecture LlamaForCausalLM is not one the frontend's renderer"):
        lookup_backend(config.backend).load_prompter(config)


def test_a_modality_the_model_has_no_input_for_is_refused_at_startup() -> None:
    config = _vllm_config(write_builtin("tiny-llava"), ["image", "audio"])
    with pytest.raises(ConfigError, match="LlavaForConditionalGeneration takes no audio input"):
        lookup_backend(config.backend).load_prompter(config)


def test_a_chat_template_that_drops_media_is_refused_at_startup(tmp_path: Path) -> None:
    model = tmp_path / "llava"
    shutil.copytree(write_builtin("tiny-llava"), model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: "
        "{{ m['content'] if m['content'] is string else '' }}\n{% endfor %}"
    )
    with pytest.raises(UnsupportedArchitectureError, match="does not place a image part as one <image>"):
        ProcessorRenderer(str(model), ["image"])


def test_the_vllm_backend_renders_with_the_models_processor() -> None:
    prompter = lookup_backend("vllm").load_prompter(_vllm_config(write_builtin("tiny-qwen2.5-vl"), ["image"]))
    assert isinstance(prompter, ProcessorRenderer)
    assert prompter.architecture == "Qwen2_5_VLForConditionalGeneration"
    assert json.loads((write_builtin("tiny-qwen2.5-vl") / "config.json").read_text())["architectures"] == [
        prompter.architecture
    ]
