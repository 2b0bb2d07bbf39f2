"""The templates named after the original conv modes: the original prompts (recorded from llava-torch
1.2.2.post1 in tests/loading/original_reference.json), rendered the same by transformers, with answer spans."""

import json
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from llavakit.processing import chat_template as chat
from llavakit.processing.conversations import CONVERSATION_TEMPLATES, HUMAN_SYSTEM, USER_SYSTEM
from llavakit.processing.templates import TEMPLATES

REFERENCE = json.loads((Path(__file__).parent.parent / "loading" / "original_reference.json").read_text())
CONVERSATIONS = list(REFERENCE["conversations"].values())


@pytest.mark.parametrize("mode", sorted(REFERENCE["prompts"]))
def test_each_conv_mode_is_built_in(mode):
    assert TEMPLATES[mode] is CONVERSATION_TEMPLATES[mode]


@pytest.mark.parametrize("mode", sorted(CONVERSATION_TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_renders_like_transformers(mode, add_generation_prompt):
    ours, _ = chat.render(TEMPLATES[mode], CONVERSATIONS, add_generation_prompt=add_generation_prompt)
    expected, _ = render_jinja_template(conversations=CONVERSATIONS, chat_template=TEMPLATES[mode],
                                        add_generation_prompt=add_generation_prompt)
    assert ours == expected


@pytest.mark.parametrize("mode", sorted(CONVERSATION_TEMPLATES))
def test_answer_spans(mode):
    conversation = REFERENCE["conversations"]["multi"]
    texts, spans = chat.render(TEMPLATES[mode], [conversation], track_generation=True)
    assert len(spans[0]) == 1 and texts[0][slice(*spans[0][0])].startswith("A photo.")


def test_default_system_prompts():
    single = REFERENCE["prompts"]
    assert single["llava_v1"]["single"].startswith(HUMAN_SYSTEM + " USER: <image>\n")
    assert single["vicuna_v1"]["single"].startswith(USER_SYSTEM + " USER: <image>\n")
    assert single["llava_v1"]["multi"].endswith("ASSISTANT: A photo.</s>USER: Why is it red? ASSISTANT:")
    assert single["mistral_instruct"]["multi"] == ("[INST] <image>\nWhat is shown in this image? [/INST] A photo. "
                                                   "</s>[INST] Why is it red? [/INST]")


@pytest.mark.parametrize("mode", ["llava_v1", "mistral_instruct", "chatml_direct", "llava_v0"])
def test_other_roles_are_refused(mode):
    with pytest.raises(Exception, match="system message, then user and assistant"):
        chat.render(TEMPLATES[mode], [[{"role": "tool", "content": "x"}]])
    with pytest.raises(Exception, match="system message, then user and assistant"):  # a system message later on
        chat.render(TEMPLATES[mode], [[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]])
