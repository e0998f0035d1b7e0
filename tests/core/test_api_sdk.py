"""The API through the official `openai` SDK against a real `aibox run` on the real SmolLM2:
completions, streaming, models.retrieve, the roles clients send (developer, tool, assistant
turns without content), penalties and logit_bias honoured, unsupported parameters and image
parts refused by name, a model whose file is missing leaving the working one loaded, and a
client that times out cancelling its generation."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from aibox.process import DaemonProcess

MODEL = "smollm2-135m-instruct"
# SmolLM2's end-of-turn tokens (<|endoftext|>, <|im_end|>): banned, the model cannot stop
NO_END = {"0": -100, "2": -100}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, models_dir):
    state = tmp_path_factory.mktemp("sdk")
    (state / "cards").mkdir()
    (state / "cards" / "ghost.toml").write_text(f'name = "ghost"\nfile = "ghost.gguf"\nsize = 10\nsha256 = "{"0" * 64}"\n')
    config = {"models_dir": str(models_dir), "runtime": {"max_loaded": 1, "max_tokens": 64}}
    with DaemonProcess(state, config) as proc:
        yield proc


@pytest.fixture
def client(daemon):
    with openai.OpenAI(base_url=daemon.api + "/v1", api_key="unused", timeout=120, max_retries=0) as c:
        yield c


def _ask(client: openai.OpenAI, content: str = "What is the capital of France? Answer in one word.", **kw):
    return client.chat.completions.create(
        model=kw.pop("model", MODEL), messages=kw.pop("messages", [{"role": "user", "content": content}]),
        temperature=0, max_tokens=kw.pop("max_tokens", 24), **kw,
    )


def test_completion_and_stream(client):
    answer = _ask(client)
    assert answer.model == MODEL
    assert "Paris" in answer.choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in _ask(client, stream=True) if c.choices]
    assert "".join(pieces) == answer.choices[0].message.content


def test_models_retrieve(client):
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.owned_by == "aibox"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.code == "model_not_found"


def test_developer_is_system_and_tool_turns_are_read(client):
    system = _ask(client, messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello!"}])
    developer = _ask(client, messages=[{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hello!"}])
    assert developer.choices[0].message.content == system.choices[0].message.content
    assert developer.usage.prompt_tokens == system.usage.prompt_tokens
    answer = _ask(client, messages=[
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "So what is it?"},
    ])
    assert answer.choices[0].message.content
    assert answer.usage.prompt_tokens > developer.usage.prompt_tokens


def test_penalties_and_logit_bias_change_the_answer(client):
    prompt = "Repeat the word 'cat' ten times."
    plain = _ask(client, prompt, max_tokens=30).choices[0].message.content
    penalised = _ask(client, prompt, max_tokens=30, frequency_penalty=2.0, presence_penalty=2.0).choices[0].message.content
    assert penalised != plain
    short = _ask(client, "Say hi.", max_tokens=40)
    assert short.choices[0].finish_reason == "stop"
    endless = _ask(client, "Say hi.", max_tokens=40, logit_bias=NO_END)
    assert endless.choices[0].finish_reason == "length"
    assert endless.usage.completion_tokens == 40


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, **extra)
    assert e.value.code == "unsupported_parameter"
    assert e.value.param == param


def test_response_format_text_is_served(client):
    assert _ask(client, response_format={"type": "text"}).choices[0].message.content


def test_image_parts_are_refused_naming_the_part(client):
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, messages=[{"role": "user", "content": content}])
    assert e.value.code == "unsupported_content"
    assert e.value.param == "messages[0].content[1]"


def test_a_prompt_no_model_fits_is_a_400_even_with_auto(client):
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, "1 " * 20_000, model="auto")
    assert e.value.code == "context_length_exceeded"


def test_a_model_whose_file_is_missing_is_404_and_unloads_nothing(daemon, client):
    _ask(client)
    with pytest.raises(openai.NotFoundError) as e:
        _ask(client, model="ghost")
    assert e.value.code == "model_not_found"
    assert "aibox models pull ghost" in e.value.message
    assert [m["name"] for m in daemon.admin("GET", "/status")["models"]] == [MODEL]


def _metric(api: str, name: str) -> float:
    text = httpx.get(api + "/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_client_that_times_out_cancels_its_generation(daemon):
    cancelled = 'aibox_requests_total{model="smollm2-135m-instruct",outcome="cancelled"}'
    tokens = 'aibox_generated_tokens_total{model="smollm2-135m-instruct"}'
    before, tokens_before = _metric(daemon.api, cancelled), _metric(daemon.api, tokens)
    with openai.OpenAI(base_url=daemon.api + "/v1", api_key="unused", timeout=1.0, max_retries=0) as impatient:
        with pytest.raises(openai.APITimeoutError):
            _ask(impatient, "Write a very long story about a dragon.", max_tokens=2000, logit_bias=NO_END)
    deadline = time.monotonic() + 60
    while _metric(daemon.api, cancelled) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(daemon.api, cancelled) == before + 1, "the abandoned generation ran on"
    assert _metric(daemon.api, tokens) - tokens_before < 2000
    assert daemon.admin("GET", "/status")["models"][0]["queue_depth"] == 0
