"""The vLLM adapter's pure parts: request bodies for vLLM's token API and the parsing of its answers.

The answers below are written by hand in the shapes vLLM 0.32's scale-out serving code emits
(``vllm/entrypoints/scale_out/token_in_token_out/serving.py``); the cluster and process tiers check the same
code against a running vLLM.
"""

from __future__ import annotations

import base64
import json

import pytest
from triptych_workers.engines.errors import EngineError
from triptych_workers.engines.load import parse_load
from triptych_workers.engines.media import PlaceholderSpan
from triptych_workers.engines.sampling import SamplingParams, TokenFrame, coalesce
from triptych_workers.engines.vllm import protocol
from triptych_workers.errors import ClientError

H = "f" * 64


def _span(offset: int, length: int, media_hash: str = H) -> PlaceholderSpan:
    return PlaceholderSpan("image", offset, length, media_hash)


def test_each_span_folds_back_to_its_first_token() -> None:
    tokens = [1, 2, 5, 5, 5, 3, 5, 5, 4]
    assert protocol.collapse_placeholders(tokens, [_span(6, 2), _span(2, 3)]) == [1, 2, 5, 3, 5, 4]
    assert protocol.collapse_placeholders(tokens, []) == tokens


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ([_span(1, 3)], "more than one token id"),
        ([_span(7, 3)], "does not fit"),
        ([_span(2, 3), _span(3, 2)], "does not fit"),
    ],
)
def test_a_span_that_is_not_a_run_of_one_token_is_refused(spans: list[PlaceholderSpan], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        protocol.collapse_placeholders([1, 2, 5, 5, 5, 3, 5, 5, 4], spans)


def test_a_span_that_names_its_placeholder_folds_to_it_whatever_it_holds() -> None:
    """Idefics3's expansion of ``<image>`` (id 7 here) holds tile and row tokens (8, 9) around the image
    tokens: the span folds back to the one token the template wrote, not to its first token."""
    tokens = [1, 8, 7, 7, 9, 8, 7, 7, 2, 3, 8, 7, 4]
    spans = [
        PlaceholderSpan("image", 1, 7, H, placeholder=7),
        PlaceholderSpan("image", 10, 2, H, placeholder=7),
    ]
    assert protocol.collapse_placeholders(tokens, spans) == [1, 7, 2, 3, 7, 4]


def test_sampling_fields_carry_vllms_names_and_optional_ones_only_when_set() -> None:
    plain = protocol.sampling_params(SamplingParams(max_tokens=7))
    assert plain == {
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "ignore_eos": False,
        "skip_special_tokens": True,
    }
    full = protocol.sampling_params(
        SamplingParams(max_tokens=7, seed=3, stop=("x",), logit_bias=((9, -2.5),), temperature=0.7),
        max_tokens=1,
    )
    assert (full["max_tokens"], full["seed"], full["stop"], full["logit_bias"]) == (1, 3, ["x"], {"9": -2.5})
    assert full["temperature"] == 0.7


def test_the_generate_body_sends_the_collapsed_prompt_and_each_item_under_its_hash() -> None:
    media = protocol.MediaFile("image", "image/png", b"\x89PNG-bytes", H)
    body = protocol.generate_body(
        [1, 5, 5, 2], [_span(1, 2)], [media], {"max_tokens": 1}, model="m", stream=False,
        kv_transfer_params=protocol.REMOTE_DECODE,
    )  # fmt: skip
    assert body["token_ids"] == [1, 5, 2]
    assert body["kv_transfer_params"] == {"do_remote_decode": True}
    assert (body["model"], body["stream"], body["return_token_ids"]) == ("m", False, True)
    (part,) = body["content_parts"]
    assert part["type"] == "image_url"
    assert part["uuid"] == H
    prefix = "data:image/png;base64,"
    assert part["url"].startswith(prefix)
    assert base64.b64decode(part["url"][len(prefix) :]) == b"\x89PNG-bytes"


def test_a_text_prompt_has_no_content_parts_and_media_must_match_the_spans() -> None:
    body = protocol.generate_body([1, 2], [], [], {}, model="m", stream=True)
    assert "content_parts" not in body
    assert "kv_transfer_params" not in body
    with pytest.raises(EngineError, match="1 media items for 0 placeholder spans"):
        protocol.generate_body([1, 2], [], [protocol.MediaFile("image", "image/png", b"x", H)], {}, model="m",
                               stream=True)  # fmt: skip


def test_only_images_are_sent_to_vllm_here() -> None:
    with pytest.raises(ClientError, match="audio is not served by the vLLM backend"):
        protocol.MediaFile("audio", "audio/wav", b"x", H).content_part()


def test_the_encoder_gets_a_chat_turn_with_the_item_alone() -> None:
    body = protocol.encoder_body(protocol.MediaFile("image", "image/png", b"x", H), model="m")
    (message,) = body["messages"]
    (part,) = message["content"]
    assert part == {"type": "image_url", "image_url": {"url": "data:image/png;base64,eA=="}, "uuid": H}
    assert (body["max_tokens"], body["stream"]) == (1, False)


def test_a_prefill_answer_gives_its_token_and_kv_handle() -> None:
    params = {"do_remote_prefill": True, "remote_block_ids": [[1]], "remote_port": 5600}
    answer = {"choices": [{"token_ids": [18]}], "kv_transfer_params": params, "prompt_token_ids": [1, 2]}
    parsed = protocol.parse_prefill(answer)
    assert (parsed.first_token, parsed.kv_transfer_params, parsed.prompt_token_ids) == (18, params, (1, 2))
    with pytest.raises(EngineError, match="no kv_transfer_params"):
        protocol.parse_prefill({"choices": [{"token_ids": [18]}]})
    with pytest.raises(EngineError, match="no token"):
        protocol.parse_prefill({"choices": []})


def test_vllms_expansion_must_be_the_rendered_prompt() -> None:
    protocol.check_expanded([1, 5, 5], [1, 5, 5])
    protocol.check_expanded([1, 5, 5], None)  # not asked for: nothing to compare
    with pytest.raises(EngineError, match="expanded the prompt to 2 tokens, Triptych rendered 3"):
        protocol.check_expanded([1, 5, 5], [1, 5])


def _sse(chunk: object) -> str:
    return f"data: {json.dumps(chunk)}"


def test_a_stream_gives_one_frame_per_event_and_holds_nothing_back() -> None:
    reader = protocol.StreamReader()
    first = _sse({"choices": [{"index": 0, "text": "ab", "token_ids": [7, 8]}], "prompt_token_ids": [1, 2]})
    # Each event's frame comes out as soon as its line is fed, before the next event exists.
    assert [(f.index, f.token_ids, f.text, f.finish_reason) for f in reader.feed(first)] == [
        (0, (7, 8), "ab", None)
    ]
    assert reader.prompt_token_ids == [1, 2]
    assert list(reader.feed("")) == []
    assert [
        (f.index, f.token_ids, f.text)
        for f in reader.feed(_sse({"choices": [{"text": "c", "token_ids": [9]}]}))
    ] == [(2, (9,), "c")]
    # vLLM may announce the end in an event of its own: a frame without tokens.
    end = _sse({"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": "length"}]})
    assert [(f.index, f.token_ids, f.text, f.finish_reason) for f in reader.feed(end)] == [
        (3, (), "", "length")
    ]
    assert list(reader.feed("data: [DONE]")) == []
    assert reader.done


def test_a_finish_in_the_tokens_own_event_ends_the_stream_there() -> None:
    reader = protocol.StreamReader()
    frames = list(reader.feed(_sse({"choices": [{"text": "x", "token_ids": [4], "finish_reason": "stop"}]})))
    assert [(f.token_ids, f.text, f.finish_reason) for f in frames] == [((4,), "x", "stop")]


def test_sse_lines_are_split_across_reads_and_a_reads_events_coalesce() -> None:
    lines, reader = protocol.SseLines(), protocol.StreamReader()
    one = _sse({"choices": [{"text": "a", "token_ids": [5]}]})
    two = _sse({"choices": [{"text": "b", "token_ids": [6], "finish_reason": "stop"}]})
    data = f"{one}\n\n{two}\n\ndata: [DONE]\n\n".encode()
    cut = len(one) // 2
    assert lines.feed(data[:cut]) == []  # half a line: nothing yet
    got = lines.feed(data[cut:])
    assert got == [one, "", two, "", "data: [DONE]", ""]
    frames = [f for line in got for f in reader.feed(line)]
    merged = coalesce(frames)
    assert (merged.index, merged.token_ids, merged.text, merged.finish_reason) == (0, (5, 6), "ab", "stop")
    assert lines.feed(b"data: x\r\n") == ["data: x"]


def test_no_frame_follows_a_finished_one() -> None:
    done = TokenFrame(0, (1,), "a", "stop")
    with pytest.raises(EngineError, match="no frame follows a finished one"):
        done.then(TokenFrame(1, (2,), "b"))


def test_an_error_event_in_the_stream_is_raised() -> None:
    reader = protocol.StreamReader()
    with pytest.raises(EngineError, match="vLLM answered 500"):
        list(reader.feed(_sse({"error": {"code": 500, "message": "engine dead"}})))


def test_vllm_client_errors_stay_client_errors() -> None:
    refused = protocol.error_of(400, json.dumps({"error": {"message": "too long", "code": 400}}))
    assert isinstance(refused, ClientError)
    assert "too long" in str(refused)
    failed = protocol.error_of(503, "overloaded")
    assert isinstance(failed, EngineError)
    assert "503" in str(failed)


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
"""


def test_vllms_gauges_become_the_contracts_load() -> None:
    load = parse_load(VLLM_METRICS, protocol.VLLM_LOAD)
    assert (load.waiting, load.running, load.kv_cache_usage) == (7, 3, 0.5)


def test_a_vllm_without_the_gauges_is_an_error_naming_them() -> None:
    with pytest.raises(EngineError, match="vLLM's /metrics lacks vllm:num_requests_waiting"):
        parse_load(VLLM_METRICS.replace("vllm:num_requests_waiting", "vllm:other"), protocol.VLLM_LOAD)
