#!/usr/bin/env python3
"""Write the fixture that checks bora's rendering of Jinja chat templates with tools.

transformers' `apply_chat_template(conversation, tools=..., tokenize=False)` renders
conversations with tool definitions, assistant tool calls (arguments as an object and as a JSON
string) and tool results through the Hermes-style template
`crates/bora-tokenizer/tests/fixtures/chat/hermes_tools.jinja`; the texts it returns are what
`crates/bora-tokenizer/tests/tool_templates.rs` expects bora to render.

Run from the repo root: `scripts/make_tool_template_fixtures.py` (creates `.venv-templates`
with pinned transformers and jinja2 if missing; no torch needed).
"""

import json

from fixture_venv import ROOT, ensure_venv
from make_chat_fixtures import ADD_TOOL, WEATHER_TOOL

FIXTURES = ROOT / "crates" / "bora-tokenizer" / "tests" / "fixtures" / "chat"
TEMPLATE = FIXTURES / "hermes_tools.jinja"
OUT = FIXTURES / "hermes_tools.json"
PACKAGES = ["transformers==5.24.0", "jinja2==3.1.6", "tokenizers==0.23.3"]

# Key order and escapes as clients send them: both show in the rendered prompt.
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Find a place named like Zoë's \"Paris\"",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query"],
        },
    },
}
WEATHER, ADD = WEATHER_TOOL, ADD_TOOL


def call(call_id, name, arguments):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CASES = [
    ({"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER, ADD, LOOKUP]}, True),
    (
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Weather in Paris and 2+3?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        call("call_1", "get_weather", {"city": "Paris", "unit": "celsius"}),
                        call("call_2", "add", '{"a": 2, "b": 3}'),
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
                {"role": "tool", "tool_call_id": "call_2", "content": "5"},
            ],
            "tools": [WEATHER, ADD],
        },
        True,
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "Weather in Lyon?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [call("c", "get_weather", {"city": "Lyon"})]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny"},
                {"role": "assistant", "content": "It is sunny."},
            ],
            "tools": [WEATHER],
        },
        False,
    ),
    ({"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]}, True),
]


def main():
    ensure_venv(__file__, ROOT / ".venv-templates", PACKAGES)
    import transformers
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    template = TEMPLATE.read_text()
    # apply_chat_template is a tokenizer method; rendering to text needs no real vocabulary.
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    tok.chat_template = template
    cases = []
    for conversation, prompt in CASES:
        text = tok.apply_chat_template(
            conversation["messages"], tools=conversation.get("tools"), tokenize=False, add_generation_prompt=prompt
        )
        cases.append({"conversation": conversation, "add_generation_prompt": prompt, "text": text})
    fixture = {"transformers": transformers.__version__, "template": TEMPLATE.name, "cases": cases}
    OUT.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
