"""Triptych's frontend renderer (``engines.renderer``) against vLLM 0.32's own rendering, for every
architecture of the builtin matrix: `tests/backends/vllm_render_check.py` runs vLLM's renderer and
multimodal processor in the vLLM venv (no engine, no weights) on the same requests.

For each request (the same media bytes, as data URLs, for both):
- the prompt ids Triptych's frontend renders are the ids vLLM's server renders for the same chat request
  (what a plain vLLM would run), and each item's span is vLLM's placeholder range for it;
- the collapsed prompt Triptych's sidecar sends to ``/inference/v1/generate`` expands, in vLLM, to exactly
  the frontend's prompt (what the sidecar's ``check_expanded`` demands on every request).

Opt-in (marker ``backends``): `make test-backends`, after `hack/backend-venv vllm`.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from triptych_contract import Modality
from triptych_workers.engines.builtin.catalog import BUILTINS, REFERENCE
from triptych_workers.engines.builtin.writer import write_builtin
from triptych_workers.engines.media import MediaItem, RenderedPrompt
from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.renderer import ProcessorRenderer
from triptych_workers.engines.vllm.protocol import collapse_placeholders
from triptych_workers.hashing import hash_media
from triptych_workers.media.audio import decode_audio
from triptych_workers.media.image import decode_image
from triptych_workers.media.video import VideoOptions, decode_video

from tests.conftest import REPO
from tests.integration.backends.conftest import run_checker
from tests.media_factory import encode_image, encode_video, gradient_array, sine, wav_bytes

pytestmark = [pytest.mark.backends, pytest.mark.slow]

CHECKER = REPO / "tests" / "backends" / "vllm_render_check.py"
IMAGES = [(40, 40), (123, 77), (300, 500)]  # (height, width)
AUDIO_SECONDS = [1.0, 3.47]
VIDEOS = [(4, 64, 96)]  # (frames, height, width): fewer frames than either side samples, so all are kept
CASES: list[tuple[str, Modality]] = [
    (name, modality) for name, builtin in sorted(BUILTINS.items()) for modality in builtin.modalities
]
MIME = {"image": "image/png", "audio": "audio/wav", "video": "video/mp4"}


def media_file(modality: Modality, geometry: tuple[float, ...], seed: int) -> bytes:
    if modality == "image":
        height, width = (int(g) for g in geometry)
        return encode_image(gradient_array(width, height, seed), "PNG")
    if modality == "video":
        frames, height, width = (int(g) for g in geometry)
        return encode_video([gradient_array(width, height, seed + f) for f in range(frames)])
    return wav_bytes(sine(220.0 * (seed + 1), geometry[0], 16_000), 16_000)


def decoded(modality: Modality, data: bytes) -> MediaItem:
    """The item as Triptych's frontend loads it (its own decoders; the hash of the bytes as fetched)."""
    media_hash = hash_media(data).hex
    if modality == "image":
        return MediaItem("image", media_hash, np.asarray(decode_image(data)))
    if modality == "video":
        return MediaItem("video", media_hash, decode_video(data, VideoOptions(num_frames=32)).frames)
    audio = decode_audio(data)
    return MediaItem("audio", media_hash, audio.samples, audio.sample_rate)


def geometries(modality: Modality) -> list[tuple[float, ...]]:
    if modality == "image":
        return [tuple(g) for g in IMAGES]
    if modality == "video":
        return [tuple(g) for g in VIDEOS]
    return [(s,) for s in AUDIO_SECONDS]


def part(modality: Modality, url: str) -> dict[str, Any]:
    if modality == "audio":
        return {"type": "audio_url", "audio_url": {"url": url}}
    return {"type": f"{modality}_url", f"{modality}_url": {"url": url}}


def model_dir(name: str) -> Path:
    return prepare_model() if name == REFERENCE else write_builtin(name)


@pytest.fixture(scope="module")
def pyav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding this venv's PyAV. vLLM decodes audio and video files with PyAV, which the
    worker-vllm image has (it is the reference image's, the workers extra) and the vLLM venv lacks; the
    checker borrows this copy (the same Python 3.11)."""
    import av

    site = Path(av.__file__).parent.parent
    out = tmp_path_factory.mktemp("pyav")
    for name in ("av", "av.libs"):
        if (site / name).exists():
            (out / name).symlink_to(site / name)
    return out


@pytest.fixture(scope="module")
def rendered(
    vllm_python: Path, pyav: Path
) -> dict[tuple[str, Modality], list[tuple[RenderedPrompt, dict[str, Any]]]]:
    """Every case rendered by Triptych, and vLLM's rendering of the same requests (one checker run)."""
    ours: dict[tuple[str, Modality], list[RenderedPrompt]] = {}
    job: list[dict[str, Any]] = []
    for name, modality in CASES:
        path = model_dir(name)
        renderer = ProcessorRenderer(str(path), [modality])
        requests = []
        for seed, geometry in enumerate(geometries(modality)):
            files = [media_file(modality, geometry, seed), media_file(modality, geometry, seed + 7)]
            urls = [f"data:{MIME[modality]};base64,{base64.b64encode(f).decode()}" for f in files]
            items = [decoded(modality, f) for f in files]
            messages = [
                {
                    "role": "user",
                    "content": [
                        part(modality, urls[0]),
                        {"type": "text", "text": "Compare"},
                        part(modality, urls[1]),
                    ],
                }
            ]
            prompt = renderer.render_chat(messages, items)
            ours.setdefault((name, modality), []).append(prompt)
            requests.append(
                {
                    "messages": messages,
                    "token_ids": collapse_placeholders(prompt.token_ids, prompt.spans),
                    "content_parts": [
                        {"type": f"{modality}_url", "url": url, "uuid": item.media_hash}
                        for url, item in zip(urls, items, strict=True)
                    ],
                }
            )
        job.append({"path": str(path), "requests": requests})
    answer = run_checker(
        vllm_python, CHECKER, {"models": job}, version=("vllm", "0.32.0"), timeout_s=1800, python_path=pyav
    )
    out = {}
    for (name, modality), model in zip(CASES, answer["models"], strict=True):
        assert model["architecture"] == BUILTINS[name].architecture
        out[name, modality] = list(zip(ours[name, modality], model["results"], strict=True))
    return out


@pytest.mark.parametrize(("name", "modality"), CASES)
def test_the_frontends_prompt_is_the_one_plain_vllm_renders(
    rendered: dict[tuple[str, Modality], list[tuple[RenderedPrompt, dict[str, Any]]]],
    name: str,
    modality: Modality,
) -> None:
    for prompt, vllm in rendered[name, modality]:
        assert list(prompt.token_ids) == vllm["chat"]["prompt_token_ids"]
        assert vllm["chat"]["placeholders"] == {modality: [[s.offset, s.length] for s in prompt.spans]}


@pytest.mark.parametrize(("name", "modality"), CASES)
def test_vllm_expands_the_sidecars_collapsed_prompt_to_the_frontends(
    rendered: dict[tuple[str, Modality], list[tuple[RenderedPrompt, dict[str, Any]]]],
    name: str,
    modality: Modality,
) -> None:
    for prompt, vllm in rendered[name, modality]:
        assert list(prompt.token_ids) == vllm["generate"]["prompt_token_ids"]
        assert vllm["generate"]["placeholders"] == {modality: [[s.offset, s.length] for s in prompt.spans]}
