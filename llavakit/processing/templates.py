"""Built-in chat templates by name, for checkpoints that ship none (or to override the shipped one).

`apply_chat_template(..., chat_template="llava")` picks one of these. Keep it a plain name -> template dict.
"""

from __future__ import annotations

from llavakit.processing.conversations import CONVERSATION_TEMPLATES

# llava-1.5 / vicuna style (also LLaVA-NeXT-Video-7B): "USER: <image>\n... ASSISTANT: ...". Each message is
# ROLE + ': ', then one "<image>\n" per image part and one "<video>\n" per video part (images first, then
# videos), then each text part followed by a space.
# System messages print their text without a role. Assistant text sits in a generation block so that
# assistant-token masks work.
LLAVA = """\
{%- for message in messages -%}
    {%- if message['role'] != 'system' -%}
        {{- message['role'] | upper ~ ': ' -}}
    {%- endif -%}
    {%- set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string
                    else message['content'] -%}
    {%- set texts = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}
    {%- set n_images = parts | selectattr('type', 'equalto', 'image') | list | length -%}
    {%- set n_videos = parts | selectattr('type', 'equalto', 'video') | list | length -%}
    {{- '<image>\\n' * n_images ~ '<video>\\n' * n_videos -}}
    {%- if message['role'] == 'assistant' -%}
        {%- generation -%}
            {%- for text in texts -%}{{- text ~ ' ' -}}{%- endfor -%}
        {%- endgeneration -%}
    {%- else -%}
        {%- for text in texts -%}{{- text ~ ' ' -}}{%- endfor -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"""

# The parts of a message: a plain-string content is one text part. Images always print before texts.
_PARTS = """\
    {%- set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string
                    else message['content'] -%}
    {%- set texts = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}
    {%- set n_images = parts | selectattr('type', 'equalto', 'image') | list | length -%}
    {%- set n_videos = parts | selectattr('type', 'equalto', 'video') | list | length -%}
"""

# llava-v1.6-mistral-7b: "[INST] <image>\n... [/INST] answer</s> [INST] ... [/INST]"; a system message is
# wrapped in <<SYS>> ... <</SYS>>. No BOS in the text: the tokenizer adds it.
MISTRAL = """\
{%- for message in messages -%}
""" + _PARTS + """\
    {%- if message['role'] == 'system' -%}
        {{- '<<SYS>>\\n' ~ texts | join('') ~ '\\n<</SYS>>\\n\\n' -}}
    {%- elif message['role'] == 'user' -%}
        {{- '[INST] ' ~ '<image>\\n' * n_images ~ texts | join('') ~ ' [/INST]' -}}
    {%- elif message['role'] == 'assistant' -%}
        {%- generation -%}{{- ' ' ~ texts | join('') ~ '</s> ' -}}{%- endgeneration -%}
    {%- else -%}
        {{- raise_exception('the mistral template supports system, user and assistant roles only') -}}
    {%- endif -%}
{%- endfor -%}
"""


def _chatml(image: str, text_prefix: str, default_system: str | None) -> str:
    """ChatML: "<|im_start|>ROLE\\n" + images + texts + "<|im_end|>\\n" per message."""
    system = "" if default_system is None else (
        "{%- if messages[0]['role'] != 'system' -%}{{- '<|im_start|>system\\n" + default_system
        + "<|im_end|>\\n' -}}{%- endif -%}\n")
    return system + """\
{%- for message in messages -%}
""" + _PARTS + """\
    {{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ '""" + image + """' * n_images -}}
    {%- if message['role'] == 'assistant' -%}
        {%- generation -%}
            {%- for text in texts -%}{{- '""" + text_prefix + """' ~ text -}}{%- endfor -%}{{- '<|im_end|>' -}}
        {%- endgeneration -%}{{- '\\n' -}}
    {%- else -%}
        {%- for text in texts -%}{{- '""" + text_prefix + """' ~ text -}}{%- endfor -%}{{- '<|im_end|>\\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""


# llava-v1.6-34b (Nous-Hermes-2-Yi-34B): ChatML, "<image>\n" before the text, no default system.
CHATML = _chatml("<image>\\n", "", None)
# llava-next-72b/110b (Qwen1.5-Chat): ChatML with Qwen's default system line.
QWEN_SYSTEM = "You are a helpful assistant."
QWEN = _chatml("<image>\\n", "", QWEN_SYSTEM)
# llava-interleave-qwen: ChatML where images print as "<image>" and every text is prefixed with "\n".
INTERLEAVE = _chatml("<image>", "\\n", None)

# llama3-llava-next-8b: Llama-3 headers; images print as "<image>", every text is prefixed with "\n".
LLAMA3 = """\
{%- for message in messages -%}
""" + _PARTS + """\
    {{- '<|start_header_id|>' ~ message['role'] ~ '<|end_header_id|>\\n\\n' ~ '<image>' * n_images -}}
    {%- if message['role'] == 'assistant' -%}
        {%- generation -%}
            {%- for text in texts -%}{{- '\\n' ~ text -}}{%- endfor -%}{{- '<|eot_id|>' -}}
        {%- endgeneration -%}
    {%- else -%}
        {%- for text in texts -%}{{- '\\n' ~ text -}}{%- endfor -%}{{- '<|eot_id|>' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}
"""

# ViP-LLaVA (the original "llava_v0" conversation): "###Human: <image>\n...###Assistant: ...". A system
# message prints its text first; the original demo's system line is VIP_SYSTEM.
VIP_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions.")
VIP = """\
{%- for message in messages -%}
""" + _PARTS + """\
    {%- if message['role'] == 'system' -%}
        {{- texts | join('') -}}
    {%- elif message['role'] == 'assistant' -%}
        {{- '###Assistant: ' -}}{%- generation -%}{{- texts | join('') -}}{%- endgeneration -%}
    {%- else -%}
        {{- '###Human: ' ~ '<image>\\n' * n_images ~ texts | join('') -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '###Assistant:' -}}{%- endif -%}
"""

# llava-onevision (llava-hf): "<|im_start|>user <image><video>\nText<|im_end|><|im_start|>assistant\n": the role and
# a space, every image then every video placeholder, each text prefixed with "\n", and "<|im_end|>" with no
# newline after it.
ONEVISION = """\
{%- for message in messages -%}
""" + _PARTS + """\
    {{- '<|im_start|>' ~ message['role'] ~ ' ' ~ '<image>' * n_images ~ '<video>' * n_videos -}}
    {%- if message['role'] == 'assistant' -%}
        {%- generation -%}{%- for text in texts -%}{{- '\\n' ~ text -}}{%- endfor -%}{%- endgeneration -%}
    {%- else -%}
        {%- for text in texts -%}{{- '\\n' ~ text -}}{%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""

TEMPLATES: dict[str, str] = {"llava": LLAVA, "mistral": MISTRAL, "chatml": CHATML, "llama3": LLAMA3, "qwen": QWEN,
                             "interleave": INTERLEAVE, "vip": VIP, "onevision": ONEVISION}

# Other names users know for the same formats: the original repos' conv modes and other tools' names.
ALIASES: dict[str, str] = {
    "vicuna": "llava",
    "llava_mistral": "mistral",
    "yi": "chatml",
    "llava_llama_3": "llama3", "llama-3": "llama3", "llama_3": "llama3",
    "qwen_1_5": "qwen", "chatml-llava": "interleave", "qwen_interleave": "interleave",
    "vipllava": "vip", "vip-llava": "vip",
    "llava_onevision": "onevision", "llava-onevision": "onevision",
    "llava_next_video": "llava", "next_video": "llava",
}
TEMPLATES.update({alias: TEMPLATES[name] for alias, name in ALIASES.items()})
# The original repo's conv modes (llava_v1, vicuna_v1, mistral_instruct, chatml_direct, llava_v0, ...) print
# exactly what its Conversation.get_prompt() prints, system prompt included: see conversations.py.
TEMPLATES.update(CONVERSATION_TEMPLATES)


def default_template_name(model_type: str | None = None, name: str | None = None) -> str:
    """The built-in template for a checkpoint that ships none, from its model_type and repo/folder name.

    The name decides where the model type cannot (a llama-architecture 34B is Yi/ChatML); "llava" otherwise.
    """
    text = f"{model_type or ''} {name or ''}".lower().replace("-", "_")
    rules = [
        (("vip",), "vip"),
        (("onevision",), "onevision"),
        (("interleave",), "interleave"),
        (("llama3", "llama_3"), "llama3"),
        (("qwen", "72b", "110b"), "qwen"),
        (("34b", "yi_"), "chatml"),
        (("mistral",), "mistral"),
    ]
    for needles, template in rules:
        if any(needle in text for needle in needles):
            return template
    return "llava"
