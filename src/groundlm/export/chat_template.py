"""groundlm's chat templates (`templates.py`) as Jinja, so a server renders the prompt string groundlm does.

transformers' `apply_chat_template` and vLLM's chat endpoint render `chat_template.jinja` with `messages`
(OpenAI-style: `content` a string or a list of parts) and `add_generation_prompt`. The Jinja written here is
one generic program over a `ChatTemplate`'s fields (set at its top), following `ChatTemplate.render` and
groundlm's server (`serve/content.py`): text parts are joined with a space; the image, wherever its part
appears, becomes the template's `image_prefix` in the first user turn; a `developer` message is the system
message; an empty system message means the template's default. Conversations groundlm refuses are refused
with `raise_exception` (both renderers provide it): more than one image, an image outside a user message,
roles out of order, an empty answer, a literal image placeholder in the text.

The loops read `message['content']` directly, which is how vLLM recognises a template that takes
OpenAI-style content parts (its content-format detection).
"""

from __future__ import annotations

import json

from ..templates import ChatTemplate


def _literal(value: object) -> str:
    """`value` as a Jinja literal."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a Jinja string literal (the same backslash escapes)
    raise TypeError(f"no Jinja literal for {value!r}")


_PROGRAM = """
{%- set ns = namespace(images=0, text='', system='', turn=0) -%}
{%- set loop_messages = messages -%}
{%- if messages and messages[0]['role'] in ('system', 'developer') -%}
  {%- set loop_messages = messages[1:] -%}
{%- endif -%}
{%- for message in messages -%}
  {%- set index = loop.index0 -%}
  {%- if message['content'] is not string -%}
    {%- for content in message['content'] -%}
      {%- if content['type'].startswith('image') -%}
        {%- if message['role'] != 'user' -%}
          {{- raise_exception('messages[' ~ index ~ ']: images may only appear in user messages') -}}
        {%- endif -%}
        {%- set ns.images = ns.images + 1 -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endfor -%}
{%- if ns.images > 1 -%}
  {{- raise_exception(ns.images ~ ' images: the ' ~ template_name ~ ' model reads one image') -}}
{%- endif -%}
{%- if not loop_messages -%}
  {{- raise_exception('the conversation has no user message') -}}
{%- endif -%}
{%- if single_turn and loop_messages | length > 2 -%}
  {{- raise_exception('the ' ~ template_name ~ ' template renders one turn only') -}}
{%- endif -%}
{%- if loop_messages[-1]['role'] == 'assistant' and add_generation_prompt -%}
  {{- raise_exception('a generation prompt must end with a user message') -}}
{%- endif -%}
{%- if loop_messages[-1]['role'] == 'user' and not add_generation_prompt -%}
  {{- raise_exception('a conversation ending with a user message is rendered with add_generation_prompt') -}}
{%- endif -%}
{%- if messages[0]['role'] in ('system', 'developer') -%}
  {%- if messages[0]['content'] is string -%}
    {%- set ns.system = messages[0]['content'] -%}
  {%- else -%}
    {%- for content in messages[0]['content'] -%}
      {%- if content['type'] == 'text' and content['text'] -%}
        {%- set ns.system = ns.system ~ (' ' if ns.system else '') ~ content['text'] -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endif -%}
{%- set system = ns.system if ns.system else default_system -%}
{%- set system_block = system_open ~ system ~ system_close if system and not ignore_user_text else '' -%}
{{- bos -}}
{%- if not system_in_user -%}{{- system_block -}}{%- endif -%}
{%- for message in loop_messages -%}
  {%- set expected = 'user' if loop.index0 is even else 'assistant' -%}
  {%- if message['role'] != expected -%}
    {{- raise_exception('message ' ~ loop.index0 ~ ' after the system message has role ' ~ message['role'] ~ ', expected ' ~ expected ~ ' (roles alternate user, assistant)') -}}
  {%- endif -%}
  {%- set ns.text = '' -%}
  {%- if message['content'] is string -%}
    {%- set ns.text = message['content'] -%}
  {%- else -%}
    {%- for content in message['content'] -%}
      {%- if content['type'] == 'text' and content['text'] -%}
        {%- set ns.text = ns.text ~ (' ' if ns.text else '') ~ content['text'] -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {%- if image_token in ns.text -%}
    {{- raise_exception('message ' ~ loop.index0 ~ ' contains the image placeholder ' ~ image_token ~ '; send the image as an image part') -}}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {%- if ns.turn > 0 and bos_every_turn -%}{{- bos -}}{%- endif -%}
    {{- first_user if ns.turn == 0 and first_user is not none else user -}}
    {%- if ns.turn == 0 -%}
      {%- if system_in_user -%}{{- system_block -}}{%- endif -%}
      {%- if ns.images -%}{{- image_prefix -}}{%- endif -%}
    {%- endif -%}
    {%- if not ignore_user_text -%}{{- ns.text -}}{%- endif -%}
    {{- assistant -}}
    {%- set ns.turn = ns.turn + 1 -%}
  {%- else -%}
    {%- if not ns.text.strip() -%}
      {{- raise_exception('message ' ~ loop.index0 ~ ': empty assistant answer') -}}
    {%- endif -%}
    {{- answer_prefix ~ ns.text ~ eos ~ turn_end -}}
  {%- endif -%}
{%- endfor -%}
"""


def jinja_chat_template(template: ChatTemplate, image_token: str = "<image>") -> str:
    """The Jinja chat template that renders `template`'s generation prompts and conversations.

    `image_token` is the processor's placeholder, refused in message text as groundlm's processor does.
    """
    system_open, system_close = template.system_format.format("\0").split("\0")
    fields = {
        "template_name": template.name,
        "bos": template.bos,
        "eos": template.eos,
        "user": template.user,
        "first_user": template.first_user,
        "assistant": template.assistant,
        "image_prefix": template.image_prefix,
        "answer_prefix": template.answer_prefix,
        "turn_end": template.turn_end,
        "bos_every_turn": template.bos_every_turn,
        "system_open": system_open,
        "system_close": system_close,
        "system_in_user": template.system_in_user,
        "default_system": template.default_system,
        "ignore_user_text": template.ignore_user_text,
        "single_turn": template.single_turn,
        "image_token": image_token,
    }
    header = f"{{#- groundlm chat template {template.name!r} (written by `groundlm export`) -#}}\n"
    sets = "".join(f"{{%- set {name} = {_literal(value)} -%}}\n" for name, value in fields.items())
    return header + sets + _PROGRAM.strip() + "\n"
