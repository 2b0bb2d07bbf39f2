"""Chat templates that print what the original LLaVA code's conversation templates print.

The original repo (haotian-liu/LLaVA, `llava/conversation.py`) builds prompts with `Conversation.get_prompt()`
in one of four separator styles. Each template here takes the conv mode's name (`llava_v1`,
`mistral_instruct`, ...) and gives the same string for the same turns: a system message replaces the
conv mode's system prompt, and without one the conv mode's own system prompt is used. Images print as
"<image>\\n" before the message text, as the original CLI and eval scripts write them.

The conv modes come from llava-torch 1.2.2.post1; tests/loading/original_reference.json holds the
prompts that code printed (scripts/record_original_reference.py).
"""

from __future__ import annotations

# The system prompts of the original conv modes.
HUMAN_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.")
USER_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
               "helpful, detailed, and polite answers to the user's questions.")
LLAVA_LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                        "content that the user provides, and assist the user with a variety of tasks using natural "
                        "language.")
CHATML_DIRECT_SYSTEM = "Answer the questions."
MPT_SYSTEM = ("A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest "
              "answers.")

# One message's text: "<image>\n" per image part, then the text parts joined (a plain string is one text part).
_MESSAGE = """\
    {%- set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string
                    else message['content'] -%}
    {%- set texts = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}
    {%- set n_images = parts | selectattr('type', 'equalto', 'image') | list | length -%}
    {%- set text = '<image>\\n' * n_images ~ texts | join('') -%}
"""

# The system text: the conversation's system message, else the conv mode's default; then the other turns.
_SYSTEM = """\
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set message = messages[0] -%}
""" + _MESSAGE + """\
    {%- set system = text -%}
    {%- set turns = messages[1:] -%}
{%- else -%}
    {%- set system = default_system -%}
    {%- set turns = messages -%}
{%- endif -%}
"""


def _check_roles(style: str) -> str:
    return ("{%- if message['role'] not in ('user', 'assistant') -%}{{- raise_exception('the " + style
            + " template supports a first system message, then user and assistant turns') -}}{%- endif -%}\n")


def _quote(text: str) -> str:
    """A Python string as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def two_style(default_system: str) -> str:
    """SeparatorStyle.TWO (vicuna_v1, llava_v1): "SYSTEM USER: q ASSISTANT: a</s>USER: q ASSISTANT:"."""
    return "{%- set default_system = " + _quote(default_system) + " -%}\n" + _SYSTEM + """\
{{- system ~ ' ' -}}
{%- for message in turns -%}
""" + _check_roles("vicuna_v1") + _MESSAGE + """\
    {%- if message['role'] == 'user' -%}
        {{- 'USER: ' ~ text ~ ' ' -}}
    {%- else -%}
        {{- 'ASSISTANT: ' -}}{%- generation -%}{{- text ~ '</s>' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}
"""


def single_style(default_system: str) -> str:
    """SeparatorStyle.SINGLE (llava_v0): "SYSTEM###Human: q###Assistant: a###Human: q###Assistant:"."""
    return "{%- set default_system = " + _quote(default_system) + " -%}\n" + _SYSTEM + """\
{{- system ~ '###' -}}
{%- for message in turns -%}
""" + _check_roles("llava_v0") + _MESSAGE + """\
    {%- if message['role'] == 'user' -%}
        {{- 'Human: ' ~ text ~ '###' -}}
    {%- else -%}
        {{- 'Assistant: ' -}}{%- generation -%}{{- text ~ '###' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}
"""


def llama_2_style(default_system: str, sep: str) -> str:
    """SeparatorStyle.LLAMA_2 (mistral_instruct: sep "", llava_llama_2: sep "<s>"):
    "[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\nq [/INST] a </s>SEP[INST] q [/INST]"; no <<SYS>> block for an
    empty system, and no SEP before the first [INST]."""
    return "{%- set default_system = " + _quote(default_system) + " -%}\n" + _SYSTEM + """\
{%- for message in turns -%}
""" + _check_roles("mistral_instruct") + _MESSAGE + """\
    {%- if message['role'] == 'user' -%}
        {%- if loop.first and system -%}
            {%- set text = '<<SYS>>\\n' ~ system ~ '\\n<</SYS>>\\n\\n' ~ text -%}
        {%- endif -%}
        {{- ('' if loop.first else """ + _quote(sep) + """) ~ '[INST] ' ~ text ~ ' [/INST]' -}}
    {%- else -%}
        {{- ' ' -}}{%- generation -%}{{- text ~ ' </s>' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
"""


def mpt_style(default_system: str) -> str:
    """SeparatorStyle.MPT (chatml_direct, mpt): "<|im_start|>system\\nSYSTEM<|im_end|><|im_start|>user\\nq<|im_end|>
    <|im_start|>assistant\\n" with no newline between the turns."""
    return "{%- set default_system = " + _quote(default_system) + " -%}\n" + _SYSTEM + """\
{{- '<|im_start|>system\\n' ~ system ~ '<|im_end|>' -}}
{%- for message in turns -%}
""" + _check_roles("chatml_direct") + _MESSAGE + """\
    {%- if message['role'] == 'user' -%}
        {{- '<|im_start|>user\\n' ~ text ~ '<|im_end|>' -}}
    {%- else -%}
        {{- '<|im_start|>assistant\\n' -}}{%- generation -%}{{- text ~ '<|im_end|>' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""


# conv mode name -> template, as llava/conversation.py's conv_templates names them.
CONVERSATION_TEMPLATES: dict[str, str] = {
    "llava_v1": two_style(HUMAN_SYSTEM),
    "vicuna_v1": two_style(USER_SYSTEM),
    "llava_v0": single_style(HUMAN_SYSTEM),
    "mistral_instruct": llama_2_style("", ""),
    "llava_llama_2": llama_2_style(LLAVA_LLAMA_2_SYSTEM, "<s>"),
    "chatml_direct": mpt_style(CHATML_DIRECT_SYSTEM),
    "mpt": mpt_style(MPT_SYSTEM),
}
CONVERSATION_TEMPLATES["v1"] = CONVERSATION_TEMPLATES["vicuna_v1"]
CONVERSATION_TEMPLATES["mistral_direct"] = CONVERSATION_TEMPLATES["chatml_direct"]


def conv_mode_for(model_name: str) -> str:
    """The conv mode the original `llava.eval.run_llava` picks from the model's folder or repo name."""
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "v1" in name:
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"
