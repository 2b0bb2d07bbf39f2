"""Built-in chat templates: each renders the reference strings of the real checkpoints, like transformers does."""

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from llavakit import AutoProcessor, AutoTokenizer
from llavakit.processing import chat_template as chat
from llavakit.processing.conversations import CONVERSATION_TEMPLATES
from llavakit.processing.templates import ALIASES, TEMPLATES, VIP_SYSTEM, default_template_name
from tests import assets

CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red stop sign."}]},
    {"role": "user", "content": [{"type": "text", "text": "Why is it red?"}]},
]

# The rendered prompts of the published checkpoints (behaviour notes §8.1); "qwen" extends the documented
# single-turn 72b/110b prompt to the same conversation.
EXPECTED = {
    "llava": "USER: <image>\nWhat is shown in this image? ASSISTANT: A red stop sign. USER: Why is it red? ASSISTANT:",
    "mistral": "[INST] <image>\nWhat is shown in this image? [/INST] A red stop sign.</s> [INST] Why is it red? [/INST]",
    "chatml": "<|im_start|>user\n<image>\nWhat is shown in this image?<|im_end|>\n<|im_start|>assistant\n"
              "A red stop sign.<|im_end|>\n<|im_start|>user\nWhy is it red?<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is shown in this image?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n\nA red stop sign.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n\nWhy is it red?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "vip": "###Human: <image>\nWhat is shown in this image?###Assistant: A red stop sign.###Human: Why is it red?"
           "###Assistant:",
    "interleave": "<|im_start|>user\n<image>\nWhat is shown in this image?<|im_end|>\n<|im_start|>assistant\n\n"
                  "A red stop sign.<|im_end|>\n<|im_start|>user\n\nWhy is it red?<|im_end|>\n<|im_start|>assistant\n",
    "qwen": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
            "What is shown in this image?<|im_end|>\n<|im_start|>assistant\nA red stop sign.<|im_end|>\n"
            "<|im_start|>user\nWhy is it red?<|im_end|>\n<|im_start|>assistant\n",
    "onevision": "<|im_start|>user <image>\nWhat is shown in this image?<|im_end|><|im_start|>assistant \n"
                 "A red stop sign.<|im_end|><|im_start|>user \nWhy is it red?<|im_end|><|im_start|>assistant\n",
}

OTHER_CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello!"}],
    [{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"},
                                  {"type": "text", "text": "and tell."}]}],
]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_renders_the_reference_prompt(name):
    ours, _ = chat.render(TEMPLATES[name], [CONVERSATION], add_generation_prompt=True)
    assert ours == [EXPECTED[name]]


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_renders_like_transformers(name, add_generation_prompt):
    conversations = [CONVERSATION] + OTHER_CONVERSATIONS
    ours, _ = chat.render(TEMPLATES[name], conversations, add_generation_prompt=add_generation_prompt)
    expected, _ = render_jinja_template(conversations=conversations, chat_template=TEMPLATES[name],
                                        add_generation_prompt=add_generation_prompt)
    assert ours == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generation_spans_cover_the_answer_like_transformers(name):
    texts, spans = chat.render(TEMPLATES[name], [CONVERSATION], track_generation=True)
    expected = render_jinja_template(conversations=[CONVERSATION], chat_template=TEMPLATES[name],
                                     return_assistant_tokens_mask=True)
    assert (texts, spans) == expected
    assert len(spans[0]) == 1 and "A red stop sign." in texts[0][slice(*spans[0][0])]


def test_system_messages():
    system = [{"role": "system", "content": [{"type": "text", "text": "SYS"}]}] + CONVERSATION[:1]
    render = lambda name: chat.render(TEMPLATES[name], [system], add_generation_prompt=True)[0][0]  # noqa: E731
    assert render("mistral").startswith("<<SYS>>\nSYS\n<</SYS>>\n\n[INST] <image>\n")
    assert render("chatml").startswith("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n")
    assert render("qwen").startswith("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n")  # no default added
    vip = [{"role": "system", "content": VIP_SYSTEM}] + CONVERSATION[:1]
    assert chat.render(TEMPLATES["vip"], [vip], add_generation_prompt=True)[0][0] == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions.###Human: <image>\nWhat is shown in this image?"
        "###Assistant:")


def test_mistral_rejects_unknown_roles():
    with pytest.raises(Exception, match="system, user and assistant"):
        chat.render(TEMPLATES["mistral"], [[{"role": "tool", "content": "x"}]])


def test_aliases_are_the_same_text():
    for alias, name in ALIASES.items():
        assert TEMPLATES[alias] is TEMPLATES[name]
    assert TEMPLATES["vicuna"] is TEMPLATES["llava"]
    # the original repo's conv mode names print the original prompts (tests/loading/test_original_processing.py)
    assert TEMPLATES["llava_v1"] is CONVERSATION_TEMPLATES["llava_v1"] is not TEMPLATES["llava"]
    assert TEMPLATES["chatml_direct"] is CONVERSATION_TEMPLATES["chatml_direct"] is not TEMPLATES["chatml"]
    assert TEMPLATES["llava_llama_3"] is TEMPLATES["llama3"]
    assert TEMPLATES["qwen_1_5"] is TEMPLATES["qwen"]


@pytest.mark.parametrize("name", ["mistral", "llava_mistral", "vip", "llama3"])
def test_selectable_by_name_on_processor_and_tokenizer(tiny_llava_dir, name):
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    text = processor.apply_chat_template(CONVERSATION, chat_template=name, add_generation_prompt=True)
    canonical = ALIASES.get(name, name)
    assert text == EXPECTED[canonical]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_dir)
    assert tokenizer.apply_chat_template(CONVERSATION, chat_template=name, add_generation_prompt=True,
                                         tokenize=False) == EXPECTED[canonical]


@pytest.mark.parametrize("model_type, name, expected", [
    ("llava", "liuhaotian/llava-v1.5-7b", "llava"),
    ("llava", "liuhaotian/llava-v1.6-vicuna-13b", "llava"),
    ("llava_mistral", "liuhaotian/llava-v1.6-mistral-7b", "mistral"),
    ("llava", "liuhaotian/llava-v1.6-34b", "chatml"),
    ("llava", "lmms-lab/llama3-llava-next-8b", "llama3"),
    ("llava_qwen", "lmms-lab/llava-next-72b", "qwen"),
    ("llava", "lmms-lab/llava-next-interleave-qwen-7b", "interleave"),
    ("llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "onevision"),
    ("llava_onevision", None, "onevision"),
    ("llava_next_video", "llava-hf/LLaVA-NeXT-Video-7B-hf", "llava"),
    ("vipllava", None, "vip"),
    ("llava", "mucai/vip-llava-7b", "vip"),
    (None, None, "llava"),
])
def test_default_template_name(model_type, name, expected):
    assert default_template_name(model_type, name) == expected
    assert default_template_name(model_type, name) in TEMPLATES


VIDEO_CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why is this video funny?"}]}],
    [{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "video"}, {"type": "image"},
                                  {"type": "image"}, {"type": "text", "text": "with these."}]},
     {"role": "assistant", "content": [{"type": "text", "text": "They match."}]},
     {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And this one?"}]}],
]


@pytest.mark.parametrize("name, reference", [("onevision", assets.ONEVISION_TEMPLATE),
                                             ("llava", assets.NEXT_VIDEO_TEMPLATE)])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_video_templates_render_like_the_checkpoints(name, reference, add_generation_prompt):
    """The built-in templates give the llava-hf OneVision / LLaVA-NeXT-Video text, generation spans included."""
    conversations = VIDEO_CONVERSATIONS + [[CONVERSATION[0]]]
    ours = chat.render(TEMPLATES[name], conversations, add_generation_prompt=add_generation_prompt,
                       track_generation=True)
    expected = render_jinja_template(conversations=conversations, chat_template=reference,
                                     add_generation_prompt=add_generation_prompt, return_assistant_tokens_mask=True)
    assert ours == expected


def test_video_placeholders():
    first = VIDEO_CONVERSATIONS[0]
    assert chat.render(TEMPLATES["onevision"], [first], add_generation_prompt=True)[0][0] == \
        "<|im_start|>user <video>\nWhy is this video funny?<|im_end|><|im_start|>assistant\n"
    assert chat.render(TEMPLATES["llava"], [first], add_generation_prompt=True)[0][0] == \
        "USER: <video>\nWhy is this video funny? ASSISTANT:"
    assert chat.render(TEMPLATES["onevision"], [[{"role": "system", "content": "Be brief."}]])[0][0] == \
        "<|im_start|>system \nBe brief.<|im_end|>"
