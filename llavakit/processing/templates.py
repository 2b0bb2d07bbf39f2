"""Built-in chat templates by name, for checkpoints that ship none (or to override the shipped one).

`apply_chat_template(..., chat_template="llava")` picks one of these. Keep it a plain name -> template dict.
"""

from __future__ import annotations

# llava-1.5 / vicuna style: "USER: <image>\n... ASSISTANT: ...". Each message is ROLE + ': ', then one
# "<image>\n" per image part (images always come first), then each text part followed by a space.
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
    {{- '<image>\\n' * n_images -}}
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

TEMPLATES: dict[str, str] = {"llava": LLAVA}
