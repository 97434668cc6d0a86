#!/usr/bin/env python3
"""Write the chat-formatting fixtures that `crates/bora-tokenizer/tests/chat_reference.rs` checks.

Token ids come from the reference libraries:
- Mistral formats: mistral-common's `MistralTokenizer.encode_chat_completion` for every shipped
  tokenizer (v1, v2, v3, v7 SentencePiece; Tekken 240718 and 240911), in `ValidationMode.finetuning`
  when the conversation ends with a complete assistant turn and `ValidationMode.test` otherwise.
  A conversation mistral-common rejects is recorded as an expected error.
- ChatML: transformers' `apply_chat_template` on the tokenizer transformers builds from the
  SmolLM2-135M-Instruct GGUF (its embedded chat template).

Masks:
- Mistral: mistral-finetune's `tokenize_instruct` rule, replayed here message by message on the
  normalized request with mistral-common's own per-message encoders: BOS, system, user and tool
  tokens are not trained; an assistant message's tokens (with its EOS) are trained unless its
  `weight` is 0. The concatenated per-message ids are asserted equal to the whole-request ids.
  mistral-finetune's `only_last` switch (train only the final assistant message when tools are
  present) and its stripping of the final call id are not applied: bora keeps training ids equal
  to serving ids and expresses the former with `weight: 0`.
- ChatML: the assistant span of message i starts where the rendering of messages[:i] with a
  generation prompt ends and stops where the rendering of messages[:i+1] ends (token positions
  from transformers' tokenization of each prefix); within it, tokens up to and including the
  first end-of-sequence token are trained.

Run from the repo root: `scripts/make_chat_fixtures.py` (creates `.venv-fixtures` if missing).
"""

import copy
import json
import os
import sys
import tempfile
from pathlib import Path

from fixture_venv import ROOT, ensure_venv

OUT = ROOT / "crates" / "bora-tokenizer" / "tests" / "fixtures" / "chat"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}


def sys_(text):
    return {"role": "system", "content": text}


def user(text):
    return {"role": "user", "content": text}


def asst(text, **extra):
    return {"role": "assistant", "content": text, **extra}


def call(call_id, name, arguments):
    entry = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        entry["id"] = call_id
    return entry


def tool(call_id, content, name=None):
    message = {"role": "tool", "tool_call_id": call_id, "content": content}
    if name is not None:
        message["name"] = name
    return message


REFERENCE = [
    sys_("You are a helpful assistant."),
    user("Hi!"),
    asst("Hello! How can I help?"),
    user("What is 2+2?"),
    asst("4."),
]

# (name, conversation). Every conversation is tried on every Mistral tokenizer; the generation
# prompt flag is implied by the last message (user/tool turn -> generation prompt).
CONVERSATIONS = [
    ("single_turn", {"messages": [user("Hello"), asst("Hi there.")]}),
    ("reference_train", {"messages": REFERENCE}),
    ("reference_generation", {"messages": REFERENCE[:-1]}),
    ("single_user_generation", {"messages": [user("Tell me a joke.")]}),
    ("system_only", {"messages": [sys_("Be terse.")]}),
    ("system_then_user_generation", {"messages": [sys_("Be terse."), user("Why is the sky blue?")]}),
    (
        "multiple_system",
        {"messages": [sys_("Rule one."), sys_("Rule two."), user("Go."), asst("Done.")]},
    ),
    (
        "system_in_middle",
        {"messages": [user("A?"), asst("B."), sys_("Switch to French."), user("C?"), asst("D.")]},
    ),
    (
        "system_after_first_user",
        {"messages": [user("First."), sys_("Late rule."), user("Second."), asst("Ok.")]},
    ),
    ("consecutive_users", {"messages": [user("Part one."), user("Part two."), asst("Both read.")]}),
    (
        "consecutive_assistants",
        {"messages": [user("Q"), asst("First half."), asst("Second half.")]},
    ),
    (
        "multi_turn",
        {
            "messages": [
                user("Name a colour."),
                asst("Blue."),
                user("Another."),
                asst("Green."),
                user("One more."),
                asst("Red."),
            ]
        },
    ),
    (
        "unicode",
        {
            "messages": [
                sys_("Réponds en français, s'il te plaît."),
                user("Bonjour, ça va ? 日本語 🤖 Ünïcödé"),
                asst("Très bien, merci ! 🎉 — 東京"),
            ]
        },
    ),
    (
        "whitespace_edges",
        {
            "messages": [
                user("  leading and trailing  "),
                asst("trailing spaces   "),
                user("\n\nnewlines\tand tabs\n"),
                asst(" leading space and trailing newline\n"),
            ]
        },
    ),
    ("assistant_only_spaces", {"messages": [user("Say nothing."), asst("   ")]}),
    ("empty_user", {"messages": [user(""), asst("You sent nothing.")]}),
    (
        "code_and_markdown",
        {
            "messages": [
                user("Write hello world in Rust."),
                asst('```rust\nfn main() {\n    println!("Hello, world!");\n}\n```'),
            ]
        },
    ),
    (
        "control_text_literal",
        {"messages": [user("What does [INST] mean? </s>"), asst("It is a marker: [/INST] <s>")]},
    ),
    (
        "content_parts",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Part A."}, {"type": "text", "text": "Part B."}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Both parts."}]},
            ]
        },
    ),
    (
        "weights",
        {
            "messages": [
                user("Q1"),
                asst("Bad answer.", weight=0),
                user("Q2"),
                asst("Good answer.", weight=1),
            ]
        },
    ),
    (
        "weight_split_assistants",
        {"messages": [user("Q"), asst("Untrained part.", weight=0), asst("Trained part.", weight=1)]},
    ),
    (
        "prefix_continuation",
        {"messages": [user("Write a haiku."), asst("Autumn moonlight", prefix=True)]},
    ),
    (
        "long_multi_turn_generation",
        {
            "messages": [
                sys_("You are a math tutor."),
                user("What is 3*7?"),
                asst("21."),
                user("And 21/3?"),
                asst("7."),
                user("And 7-7?"),
            ]
        },
    ),
    (
        "tool_call_and_result",
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                user("What's the weather in Paris?"),
                asst(None, tool_calls=[call("abc123def", "get_weather", '{"city": "Paris"}')]),
                tool("abc123def", '{"temperature": 18, "sky": "sunny"}', name="get_weather"),
                asst("It is 18 degrees and sunny in Paris."),
            ],
        },
    ),
    (
        "tool_result_generation",
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                sys_("Use tools when helpful."),
                user("Weather in Oslo?"),
                asst(None, tool_calls=[call("Xy9Zq1W2e", "get_weather", {"city": "Oslo", "unit": "celsius"})]),
                tool("Xy9Zq1W2e", '{"temperature":-3,"sky":"snow"}', name="get_weather"),
            ],
        },
    ),
    (
        "two_tool_calls",
        {
            "tools": [WEATHER_TOOL, ADD_TOOL],
            "messages": [
                user("Weather in Rome, and 2+3?"),
                asst(
                    None,
                    tool_calls=[
                        call("call00001", "get_weather", '{"city":"Rome"}'),
                        call("call00002", "add", '{"a": 2, "b": 3}'),
                    ],
                ),
                tool("call00001", "sunny", name="get_weather"),
                tool("call00002", "5", name="add"),
                asst("Rome is sunny and 2+3 = 5."),
            ],
        },
    ),
    (
        "tool_history_then_user",
        {
            "tools": [ADD_TOOL],
            "messages": [
                user("Add 1 and 2."),
                asst(None, tool_calls=[call("a1b2c3d4e", "add", '{"a": 1, "b": 2}')]),
                tool("a1b2c3d4e", "3", name="add"),
                asst("1 + 2 = 3."),
                user("Thanks! Now say bye."),
                asst("Bye!"),
            ],
        },
    ),
    (
        "tools_generation",
        {
            "tools": [WEATHER_TOOL, ADD_TOOL],
            "messages": [sys_("You can call functions."), user("Hi"), asst("Hello."), user("Weather in Nice?")],
        },
    ),
    (
        "tool_call_last_unicode_args",
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                user("Météo à Zürich ?"),
                asst(None, tool_calls=[call("zurich123", "get_weather", {"city": "Zürich", "unit": "celsius"})]),
            ],
        },
    ),
    (
        "tool_call_null_id_last",
        {
            "tools": [ADD_TOOL],
            "messages": [user("Add 4 and 5."), asst(None, tool_calls=[call(None, "add", '{"a": 4, "b": 5}')])],
        },
    ),
    (
        "tool_result_plain_and_empty",
        {
            "tools": [WEATHER_TOOL, ADD_TOOL],
            "messages": [
                user("Two things please."),
                asst(
                    None,
                    tool_calls=[
                        call("callAAAAA", "get_weather", '{"city": "Lima"}'),
                        call("callBBBBB", "add", ""),
                    ],
                ),
                tool("callAAAAA", "It is foggy.   "),
                tool("callBBBBB", ""),
                asst("Lima is foggy."),
            ],
        },
    ),
    ("error_assistant_first", {"messages": [asst("I speak first.")]}),
    ("error_tool_after_user", {"messages": [user("Hi"), tool("abc123def", "x")]}),
    (
        "error_bad_call_id",
        {
            "tools": [ADD_TOOL],
            "messages": [user("Add."), asst(None, tool_calls=[call("bad", "add", "{}")]), tool("bad", "0"), asst("0")],
        },
    ),
    (
        "error_content_and_tool_calls",
        {
            "tools": [ADD_TOOL],
            "messages": [
                user("Add."),
                asst("Calling.", tool_calls=[call("abcdefghi", "add", "{}")]),
                tool("abcdefghi", "0"),
                asst("0"),
            ],
        },
    ),
    ("error_prefix_not_last", {"messages": [user("a"), asst("b", prefix=True), user("c")]}),
]

MISTRAL_FILES = [
    "tokenizer.model.v1",
    "mistral_instruct_tokenizer_240216.model.v2",
    "mistral_instruct_tokenizer_240323.model.v3",
    "mistral_instruct_tokenizer_241114.model.v7",
    "tekken_240718.json",
    "tekken_240911.json",
]


def text_of(content):
    """mistral-common content: a string stays a string; text parts become TextChunks."""
    from mistral_common.protocol.instruct.chunk import TextChunk

    if content is None or isinstance(content, str):
        return content
    return [TextChunk(text=part["text"]) for part in content]


def to_mistral_messages(conversation):
    from mistral_common.protocol.instruct.messages import (
        FinetuningAssistantMessage,
        SystemMessage,
        ToolMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.tool_calls import FunctionCall, ToolCall

    messages = []
    for m in conversation["messages"]:
        role = m["role"]
        if role == "system":
            messages.append(SystemMessage(content=text_of(m["content"])))
        elif role == "user":
            messages.append(UserMessage(content=text_of(m["content"])))
        elif role == "tool":
            messages.append(ToolMessage(content=text_of(m["content"]), tool_call_id=m["tool_call_id"], name=m.get("name")))
        else:
            calls = None
            if m.get("tool_calls"):
                calls = [
                    ToolCall(
                        id=c.get("id", "null"),
                        function=FunctionCall(name=c["function"]["name"], arguments=c["function"]["arguments"]),
                    )
                    for c in m["tool_calls"]
                ]
            messages.append(
                FinetuningAssistantMessage(
                    content=text_of(m.get("content")),
                    tool_calls=calls,
                    prefix=m.get("prefix", False),
                    weight=m.get("weight"),
                )
            )
    return messages


def assistant_run_weights(conversation):
    """Weights of the assistant messages the normalizer produces, in order.

    mistral-common merges runs of consecutive messages with the same role and the same weight
    (a missing weight is its own value), and keeps their order; it drops the weight field when
    it builds the merged message, so the mask rule has to recover it from the runs."""
    weights = []
    previous = None
    for m in conversation["messages"]:
        key = (m["role"], m.get("weight"))
        if key != previous and m["role"] == "assistant":
            weights.append(m.get("weight"))
        previous = key
    return weights


def mistral_case(path, name, conversation):
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.tool_calls import Tool
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    last = conversation["messages"][-1]
    training = last["role"] == "assistant" and not last.get("prefix", False)
    generation = last["role"] in ("user", "tool") or (last["role"] == "system" and len(conversation["messages"]) == 1)
    mode = ValidationMode.finetuning if training else ValidationMode.test
    case = {"name": name, "conversation": conversation, "add_generation_prompt": generation}
    try:
        mt = MistralTokenizer.from_file(str(path), mode=mode)
        tools = [Tool.model_validate(t) for t in conversation.get("tools", [])] or None
        request = ChatCompletionRequest(messages=to_mistral_messages(conversation), tools=tools)
        ids = mt.encode_chat_completion(request).tokens
    except Exception as error:  # noqa: BLE001 - any rejection is an expected error for bora too
        case["error"] = f"{type(error).__name__}: {error}"
        return case

    # Replay mistral-finetune's per-message tokenization on the normalized request.
    validated = mt._chat_completion_request_validator.validate_request(request)
    instruct = mt._instruct_request_normalizer.from_chat_completion_request(validated)
    it = mt.instruct_tokenizer
    users = [i for i, msg in enumerate(instruct.messages) if isinstance(msg, UserMessage)]
    first_user, last_user = (users[0], users[-1]) if users else (-1, -1)
    weights = iter(assistant_run_weights(conversation))
    tokens, mask = [mt.instruct_tokenizer.tokenizer.bos_id], [False]
    for i, msg in enumerate(instruct.messages):
        if isinstance(msg, UserMessage):
            piece = it.encode_user_message(
                msg,
                instruct.available_tools,
                i == last_user,
                i == first_user,
                system_prompt=instruct.system_prompt,
                force_img_first=True,
            )[0]
            trained = False
        elif isinstance(msg, ToolMessage):
            piece = it.encode_tool_message(msg, i < last_user)[0]
            trained = False
        elif isinstance(msg, SystemMessage):
            piece = it.encode_system_message(msg)[0]
            trained = False
        else:
            assert isinstance(msg, AssistantMessage)
            piece = it.encode_assistant_message(msg, i < last_user)
            trained = next(weights) != 0
        tokens += piece
        mask += [trained] * len(piece)
    assert tokens == ids, (path.name, name, tokens, ids)
    case["ids"] = ids
    case["mask"] = [int(m) for m in mask]
    return case


CHATML_CONVERSATIONS = [
    ("single_turn", [user("Hello"), asst("Hi there.")], False),
    ("reference_train", REFERENCE, False),
    ("reference_generation", REFERENCE[:-1], True),
    ("single_user_generation", [user("Tell me a joke.")], True),
    ("single_user_no_prompt", [user("Tell me a joke.")], False),
    ("multi_turn", [user("Name a colour."), asst("Blue."), user("Another."), asst("Green.")], False),
    ("multi_turn_prompt", [user("Name a colour."), asst("Blue."), user("Another.")], True),
    ("unicode", [user("Bonjour, ça va ? 日本語 🤖"), asst("Très bien ! 🎉 — 東京")], False),
    ("whitespace_edges", [user("  lead\n\n"), asst("trailing   "), user("\t"), asst("\nnewline")], False),
    ("code", [user("Rust hello?"), asst('```rust\nfn main() {\n    println!("hi");\n}\n```')], False),
    ("special_text_in_content", [user("Say <|im_end|> please"), asst("<|im_start|>ok")], False),
    ("system_prompt", [sys_("You are terse."), user("Hi"), asst("Hi.")], False),
    ("weights", [user("Q1"), asst("Bad.", weight=0), user("Q2"), asst("Good.", weight=1)], False),
    ("empty_assistant", [user("Say nothing."), asst("")], False),
    ("numbers", [user("Count: 1, 22, 333, 4444, 55555"), asst("Counted 5 numbers.")], False),
]


def chatml_cases(gguf_path):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / gguf_path.name
        link.symlink_to(gguf_path)
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
    eos = tok.eos_token_id

    def ids_of(messages, prompt):
        if not messages and not prompt:
            return []
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        return tok(text, add_special_tokens=False)["input_ids"]

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    cases = []
    for name, messages, prompt in CHATML_CONVERSATIONS:
        plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
        full = tok.apply_chat_template(plain, tokenize=True, add_generation_prompt=prompt, return_dict=True)["input_ids"]
        assert full == ids_of(plain, prompt)
        mask = [0] * len(full)
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or m.get("weight") == 0:
                continue
            start = common(ids_of(plain[:i], True), full)
            end = common(ids_of(plain[: i + 1], False), full)
            for pos in range(start, end):
                mask[pos] = 1
                if full[pos] == eos:
                    break
        cases.append(
            {
                "name": name,
                "conversation": {"messages": copy.deepcopy(messages)},
                "add_generation_prompt": prompt,
                "ids": full,
                "mask": mask,
            }
        )
    return cases


# A template in the style of Hugging Face Mistral templates, written for this test: it exercises
# what real templates use (namespace, loop controls, Python string methods, dict literals,
# `tojson` with and without indent, `map`, `raise_exception`, tools, bos/eos variables).
TEST_TEMPLATE = """
{%- set ns = namespace(system='', shown=false) %}
{%- for m in messages %}
    {%- if m['role'] == 'system' %}{% set ns.system = ns.system + m['content'].strip() + '\n\n' %}{% endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}{% continue %}{% endif %}
    {%- if message['role'] == 'user' %}
        {%- if tools is not none and loop.last %}
            {{- '[AVAILABLE_TOOLS]' + tools|tojson(indent=2) + '[/AVAILABLE_TOOLS]' }}
        {%- endif %}
        {{- '[INST]' }}
        {%- if ns.system and not ns.shown %}{{ ns.system }}{% set ns.shown = true %}{% endif %}
        {{- message['content'].strip() + '[/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {%- if message.tool_calls is defined and message.tool_calls %}
            {{- '[TOOL_CALLS]' + message.tool_calls|map(attribute='function')|list|tojson }}
        {%- else %}
            {{- message['content'] }}
        {%- endif %}
        {{- eos_token }}
    {%- elif message['role'] == 'tool' %}
        {{- '[TOOL_RESULTS]' + {'content': message['content'], 'call_id': message['tool_call_id']}|tojson + '[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception('unexpected role ' + message['role']) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt and messages[-1]['role'] == 'tool' %}{{ '\n' }}{% endif %}
"""


def jinja_tekken_cases(tekken_path):
    """TEST_TEMPLATE rendered by transformers, tokenized by mistral-common's Tekken with the
    special-token strings in the text turned into their ids (what `encode_with_special` does)."""
    import re

    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = Tekkenizer.from_file(str(tekken_path))
    specials = {t["token_str"]: t["rank"] for t in tok._all_special_tokens}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))

    def encode(text):
        ids, pos = [], 0
        for m in pattern.finditer(text):
            ids += tok.encode(text[pos : m.start()], bos=False, eos=False) + [specials[m.group()]]
            pos = m.end()
        return ids + tok.encode(text[pos:], bos=False, eos=False)

    def render(messages, tools, prompt):
        rendered, _ = render_jinja_template(
            [messages],
            tools=tools,
            chat_template=TEST_TEMPLATE,
            add_generation_prompt=prompt,
            bos_token="<s>",
            eos_token="</s>",
        )
        return rendered[0]

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    cases = []
    for name, conv in CONVERSATIONS:
        messages = conv["messages"]
        if name.startswith("error_") or any(
            not isinstance(m.get("content"), (str, type(None))) or m.get("prefix") for m in messages
        ):
            continue
        tools = conv.get("tools")
        prompt = messages[-1]["role"] in ("user", "tool")
        full_text = render(messages, tools, prompt)
        full = encode(full_text)
        mask = [0] * len(full)
        case = {"name": name, "conversation": conv, "add_generation_prompt": prompt}
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or m.get("weight") == 0:
                continue
            end_text = render(messages[: i + 1], tools, False)
            start_text = render(messages[:i], tools, True)
            if not (full_text.startswith(end_text) and full_text.startswith(start_text)):
                # The template moves text between turns: no message boundary to attribute by.
                case["error"] = f"rendering of the first {i + 1} messages is not a prefix"
                break
            start, end = common(encode(start_text), full), common(encode(end_text), full)
            for pos in range(start, end):
                mask[pos] = 1
                if full[pos] == specials["</s>"]:
                    break
        if "error" not in case:
            case["ids"] = full
            case["mask"] = mask
        cases.append(case)
    return cases


def write_json(path, value):
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)


def main():
    ensure_venv(__file__)
    import mistral_common
    import transformers

    data = Path(mistral_common.__file__).parent / "data"
    OUT.mkdir(parents=True, exist_ok=True)
    for file_name in MISTRAL_FILES:
        cases = [mistral_case(data / file_name, name, conv) for name, conv in CONVERSATIONS]
        ok = sum("ids" in c for c in cases)
        print(f"{file_name}: {ok} encoded, {len(cases) - ok} rejected")
        write_json(
            OUT / f"mistral_{file_name.removesuffix('.json')}.json",
            {"tokenizer": file_name, "mistral_common": mistral_common.__version__, "cases": cases},
        )

    cases = jinja_tekken_cases(data / "tekken_240911.json")
    print(f"test template on tekken_240911: {len(cases)} conversations")
    write_json(
        OUT / "jinja_tekken_240911.json",
        {"tokenizer": "tekken_240911.json", "template": TEST_TEMPLATE, "cases": cases},
    )

    home = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora"))
    gguf = home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists():
        sys.exit(f"{gguf} is missing: run scripts/fetch-default-model.sh first")
    cases = chatml_cases(gguf)
    print(f"{gguf.name}: {len(cases)} ChatML conversations")
    write_json(
        OUT / "chatml_smollm2.json",
        {"model": gguf.name, "transformers": transformers.__version__, "cases": cases},
    )


if __name__ == "__main__":
    main()
