#!/usr/bin/env python3
"""Write the tool-call fixtures that bora-serve's tool-call reader is checked against.

For each Mistral tokenizer with tool calls (SentencePiece v3 and v7, Tekken 240718 and 240911),
mistral-common encodes conversations whose last turn is an assistant tool call; the ids after
the last `[/INST]` are what a model trained on that format generates. mistral-common's own
decoder for served output (`mistral_common.experimental.tools`: split content from
`[TOOL_CALLS]` segments, then `_decode_tool_calls`) turns those ids back into content and calls,
which the fixture records.

Besides the calls below, every call of the tool-use training set that
`scripts/test_serve_openai.py` trains an adapter on is a case; for the Tekken 240718 tokenizer
(the tiny model's) those cases also record the bytes of each token between `[TOOL_CALLS]` and
the end token, which the served answer's logprob tokens must equal.

Run from the repo root: `scripts/make_toolcall_fixtures.py` (creates `.venv-toolcalls`, with
mistral-common and sentencepiece only, if missing).
"""

import json
from pathlib import Path

from fixture_venv import ROOT, ensure_venv

FIXTURES = ROOT / "crates" / "bora-serve" / "tests" / "fixtures"
OUT = FIXTURES / "tool_calls.json"
TRAINING_SET = FIXTURES / "tool_use_train.jsonl"
SERVED_TOKENIZER = "tekken_240718.json"
TOKENIZERS = [
    "mistral_instruct_tokenizer_240323.model.v3",
    "mistral_instruct_tokenizer_241114.model.v7",
    "tekken_240718.json",
    "tekken_240911.json",
]
# (content, [(id, name, arguments)]); content only where the format allows it (v7).
CALLS = [
    ("", [("abcDEF123", "get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("", [("a1b2c3d4e", "add", {"a": 2, "b": -3.5}), ("Z9y8X7w6V", "get_weather", {"city": "Zoë 日本"})]),
    ("", [("q1w2e3r4t", "search", {"query": "say \"hi\"\n\tnow", "filters": {"year": [2023, 2024], "open": True, "tag": None}})]),
    ("", [("nulltest1", "noop", {})]),
    ("Let me check.", [("k9k9k9k9k", "get_weather", {"city": "Lyon"})]),
]


def trained_calls():
    """The distinct assistant calls of the tool-use training set, as (content, calls) cases."""
    cases = []
    for line in TRAINING_SET.read_text().splitlines():
        for message in json.loads(line)["messages"]:
            calls = [
                (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in message.get("tool_calls", [])
            ]
            if calls and ("", calls) not in cases:
                cases.append(("", calls))
    return cases


def main():
    ensure_venv(__file__, ROOT / ".venv-toolcalls", ["mistral-common[sentencepiece]==1.13.1"])
    import mistral_common
    from mistral_common.experimental.tools import _decode_tool_calls, _split_content_and_tool_calls
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest
    from mistral_common.protocol.instruct.tool_calls import FunctionCall, ToolCall
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy, TokenizerVersion
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    data = Path(mistral_common.__file__).parent / "data"
    cases = []
    trained = trained_calls()
    for name in TOKENIZERS:
        mt = MistralTokenizer.from_file(str(data / name))
        inner = mt.instruct_tokenizer.tokenizer
        end_inst = inner.get_special_token("[/INST]")
        tool_token = inner.get_special_token("[TOOL_CALLS]")
        for content, calls in CALLS + trained:
            if content and inner.version < TokenizerVersion.v7:
                continue
            message = AssistantMessage(
                content=content or None,
                tool_calls=[
                    ToolCall(id=i, function=FunctionCall(name=n, arguments=json.dumps(a)))
                    for i, n, a in calls
                ],
            )
            request = InstructRequest(messages=[UserMessage(content="Go."), message])
            ids = mt.instruct_tokenizer.encode_instruct(request).tokens
            generated = ids[len(ids) - ids[::-1].index(end_inst):]
            assert generated[-1] == inner.eos_id
            content_ids, call_ids = _split_content_and_tool_calls(generated[:-1], tool_token)
            decoded = _decode_tool_calls(call_ids, inner)
            case = {
                "tokenizer": name,
                "generated": generated,
                "content": inner.decode(content_ids) if content_ids else "",
                "calls": [
                    {"id": c.id, "name": c.function.name, "arguments": json.loads(c.function.arguments)}
                    for c in decoded
                ],
            }
            if name == SERVED_TOKENIZER and (content, calls) in trained:
                assert generated[0] == tool_token
                case["pieces"] = [
                    list(inner.id_to_byte_piece(i, SpecialTokenPolicy.RAISE)) for i in generated[1:-1]
                ]
            cases.append(case)
    OUT.write_text(json.dumps({"mistral_common": mistral_common.__version__, "cases": cases}, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(cases)} cases")


if __name__ == "__main__":
    main()
