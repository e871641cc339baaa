"""What each builtin model is, torch-free: its name (``model.source.builtin``), the architecture its
``config.json`` names and the modalities its processor takes. The operator's list of builtin names
(``triptych_operator.api.BUILTIN_MODELS``) must be these names; a unit test holds the two together."""

from __future__ import annotations

from dataclasses import dataclass

from triptych_contract import Modality

# The reference backend's model (engines.reference): its own writer, manifest and audio stand-in.
REFERENCE = "tiny-qwen2-vl"


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    architecture: str
    modalities: tuple[Modality, ...]
    about: str


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            REFERENCE,
            "Qwen2VLForConditionalGeneration",
            ("image", "video"),
            "Qwen2-VL (the reference backend's model; it also takes audio there, through a stand-in "
            "encoder only the reference engine has)",
        ),
        Builtin("tiny-llava", "LlavaForConditionalGeneration", ("image",), "LLaVA 1.5: CLIP + Llama"),
        Builtin(
            "tiny-llava-next",
            "LlavaNextForConditionalGeneration",
            ("image",),
            "LLaVA-NeXT: CLIP + Llama, any-resolution tiles and image newlines",
        ),
        Builtin(
            "tiny-qwen2.5-vl",
            "Qwen2_5_VLForConditionalGeneration",
            ("image", "video"),
            "Qwen2.5-VL: windowed ViT, images and videos",
        ),
        Builtin(
            "tiny-idefics3",
            "Idefics3ForConditionalGeneration",
            ("image",),
            "Idefics3: SigLIP-style ViT + Llama, image split into a grid of tiles with row/column tokens",
        ),
        Builtin(
            "tiny-qwen2-audio",
            "Qwen2AudioForConditionalGeneration",
            ("audio",),
            "Qwen2-Audio: Whisper-style audio encoder + Qwen2",
        ),
    )
}


def model_dir_name(name: str) -> str:
    """The directory a builtin model is written to under the model mount (the reference's is historic)."""
    return "reference" if name == REFERENCE else name
