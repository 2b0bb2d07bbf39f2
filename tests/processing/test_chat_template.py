"""Chat template rendering against transformers' renderer, and the built-in templates."""

import dataclasses

import jinja2
import PIL.Image
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from llavakit.processing import chat_template as chat
from llavakit.processing.templates import LLAVA, TEMPLATES
from tests.assets import LLAVA_15_TEMPLATE
from tests.reference import CHAT_MESSAGE_OBJECTS

CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "A red stop sign."}]},
     {"role": "user", "content": [{"type": "text", "text": "Why is it red?"}]}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello!"}],
    [{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"},
                                  {"type": "text", "text": "and tell."}]}],
    [{"role": "user", "content": "ünïcödé 😀\nnew line"}, {"role": "assistant", "content": "ok  "}],
]

# Features real Hub templates use: loop controls, namespaces, tojson, raise_exception, generation blocks.
FEATURE_TEMPLATE = (
    "{% set ns = namespace(n=0) %}"
    "{% for m in messages %}{% if m['role'] == 'stop' %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}"
    "<{{ m['role'] }}>{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | tojson }}</s>"
    "{% endgeneration %}{% else %}{{ m['content'] | tojson }}{% endif %}\n{% endfor %}"
    "{% if tools %}TOOLS {{ tools | tojson }}{% endif %}{% if documents %}DOCS {{ documents[0]['title'] }}{% endif %}"
    "{{ ns.n }}{% if add_generation_prompt %}<assistant>{% endif %}{{ bos_token }}"
)


def _reference(template, conversations, **kwargs):
    texts, spans = render_jinja_template(conversations=conversations, chat_template=template, **kwargs)
    return texts, spans


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_builtin_llava_template_renders_like_the_checkpoint_template(add_generation_prompt):
    ours, _ = chat.render(LLAVA, CONVERSATIONS, add_generation_prompt=add_generation_prompt)
    expected, _ = _reference(LLAVA_15_TEMPLATE, CONVERSATIONS, add_generation_prompt=add_generation_prompt)
    assert ours == expected
    assert TEMPLATES["llava"] is LLAVA
    assert ours[0].startswith("USER: <image>\nWhat is shown in this image? ASSISTANT: A red stop sign. USER:")


@pytest.mark.parametrize("template", [LLAVA_15_TEMPLATE, LLAVA, FEATURE_TEMPLATE])
def test_renders_like_transformers(template):
    kwargs = dict(add_generation_prompt=True, tools=[{"name": "f", "parameters": {}}],
                  documents=[{"title": "Doc", "text": "body"}], bos_token="<s>")
    ours, _ = chat.render(template, CONVERSATIONS, **kwargs)
    expected, _ = _reference(template, CONVERSATIONS, **kwargs)
    assert ours == expected


def test_generation_spans_match_transformers():
    for template in (LLAVA, FEATURE_TEMPLATE):
        texts, spans = chat.render(template, CONVERSATIONS, track_generation=True)
        expected_texts, expected_spans = _reference(template, CONVERSATIONS, return_assistant_tokens_mask=True)
        assert texts == expected_texts and spans == expected_spans
    assert [texts[1][a:b] for a, b in spans[1]] == ['"Hello!"</s>']


@pytest.mark.parametrize("template", [LLAVA_15_TEMPLATE, LLAVA, FEATURE_TEMPLATE])
def test_continue_final_message_matches_transformers(template):
    conversations = [c[:2] for c in CONVERSATIONS if len(c) >= 2]
    ours, _ = chat.render(template, conversations, continue_final_message=True)
    expected, _ = _reference(template, conversations, continue_final_message=True)
    assert ours == expected
    assert ours[0] == "USER: <image>\nWhat is shown in this image? ASSISTANT: A red stop sign." or \
        template is FEATURE_TEMPLATE


def test_continue_final_message_with_trailing_space_is_trimmed_like_transformers():
    conversation = [[{"role": "assistant", "content": "The answer is "}]]
    template = "{% for m in messages %}{{ m['content'] | trim }}<end>{% endfor %}"
    ours, _ = chat.render(template, conversation, continue_final_message=True)
    assert ours == _reference(template, conversation, continue_final_message=True)[0] == ["The answer is"]


def test_continue_final_message_errors():
    conversation = [[{"role": "user", "content": "hi"}]]
    with pytest.raises(ValueError, match="cannot both be set"):
        chat.render(LLAVA, conversation, continue_final_message=True, add_generation_prompt=True)
    with pytest.raises(ValueError, match='no "reasoning_content"'):
        chat.render(LLAVA, conversation, continue_final_message="reasoning_content")
    with pytest.raises(ValueError, match="never reads that field"):
        chat.render("{% for m in messages %}{{ m['text'] }}{% endfor %}", conversation, continue_final_message=True)
    with pytest.raises(ValueError, match="does not appear in the rendered chat"):
        chat.render("{% for m in messages %}{{ m['content'][:1] }}{% endfor %}", conversation,
                    continue_final_message=True)
    with pytest.raises(ValueError, match="no text part"):
        chat.render(LLAVA, [[{"role": "user", "content": [{"type": "image"}]}]], continue_final_message=True)


def test_media_objects_become_placeholders_like_transformers():
    image = PIL.Image.new("RGB", (2, 2))
    conversation = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "x"}]}]]
    template = "{{ messages[0]['content'][0]['image'] }}|{{ messages | length }}"
    ours, _ = chat.render(template, conversation)
    assert ours == _reference(template, conversation)[0] == ["<Image>|1"]


def test_template_errors_and_sandbox():
    with pytest.raises(jinja2.exceptions.TemplateError, match="only user and assistant"):
        chat.render("{{ raise_exception('only user and assistant') }}", [[{"role": "user", "content": "x"}]])
    with pytest.raises(jinja2.exceptions.SecurityError):
        chat.render("{{ ''.__class__.__mro__ }}", [[{"role": "user", "content": "x"}]])
    with pytest.raises(jinja2.exceptions.SecurityError):
        chat.render("{% set _ = messages.append(1) %}", [[{"role": "user", "content": "x"}]])
    with pytest.raises(TypeError, match="tools must be JSON-schema dicts"):
        chat.render(LLAVA, [[{"role": "user", "content": "x"}]], tools=[print])


def test_split_conversations():
    single = [{"role": "user", "content": "a", "name": None}]
    conversations, batched = chat.split_conversations(single)
    assert not batched and conversations == [[{"role": "user", "content": "a"}]]
    conversations, batched = chat.split_conversations([single, single])
    assert batched and len(conversations) == 2
    with pytest.raises(ValueError, match="non-empty list"):
        chat.split_conversations([])
    with pytest.raises(TypeError, match="must be dicts"):
        chat.split_conversations(["hello"])


@dataclasses.dataclass
class Block:
    type: str
    text: str


@dataclasses.dataclass
class Message:
    role: str
    content: list
    name: str | None = None


class PydanticLike:
    """What the OpenAI SDK returns: an object with model_dump()."""

    def __init__(self, **fields):
        self.fields = fields

    def model_dump(self):
        return dict(self.fields)


@dataclasses.dataclass
class Chat:
    messages: list


def test_message_objects_render_like_dicts_as_transformers_renders_them(tokenizer_dir):
    """transformers 5.24+: dataclasses, pydantic models and objects with `.messages` are chat input too."""
    import transformers

    from llavakit import AutoTokenizer

    plain = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]
    objects = [Message("user", [Block("text", "Hi")]),
               PydanticLike(role="assistant", content=[{"type": "text", "text": "Hello"}], tool_calls=None)]
    assert chat.split_conversations(objects) == chat.split_conversations(plain)
    assert chat.split_conversations(Chat(objects)) == chat.split_conversations(plain)
    assert chat.split_conversations([Chat(objects), plain])[1] is True
    ours = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = ours.apply_chat_template(plain, chat_template=LLAVA_15_TEMPLATE, tokenize=False)
    assert ours.apply_chat_template(Chat(objects), chat_template=LLAVA_15_TEMPLATE, tokenize=False) == expected
    if CHAT_MESSAGE_OBJECTS:
        ref = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
        assert ref.apply_chat_template(Chat(objects), chat_template=LLAVA_15_TEMPLATE, tokenize=False) == expected


def test_reasoning_aliases_and_template_variables():
    template = "{{ messages[0]['reasoning_content'] }}/{{ messages[0]['thinking'] }}{{ extra }}"
    ours, _ = chat.render(template, [[{"role": "assistant", "content": "a", "reasoning": "r"}]], extra="!")
    assert ours == _reference(template, [[{"role": "assistant", "content": "a", "reasoning": "r"}]], extra="!")[0]
    assert ours == ["r/r!"]
    assert chat.template_variables(template) == {"messages", "extra"}
    assert chat.template_variables(LLAVA) == {"messages", "add_generation_prompt"}


def test_token_mask_from_spans():
    offsets = [(0, 0), (0, 3), (3, 5), (5, 9), (0, 0)]
    assert chat.token_mask_from_spans(offsets, [(4, 6)]) == [0, 0, 1, 1, 0]
    assert chat.has_generation_tags(LLAVA) and not chat.has_generation_tags(LLAVA_15_TEMPLATE)
