"""Render a chat template with Python's Jinja2 the way Hugging Face transformers does.

stdin:  {"template": str, "messages": [...], "add_generation_prompt": bool,
         "bos_token": str, "eos_token": str, "tools": [...] (optional)}
stdout: {"rendered": str}
"""
import json
import sys
from datetime import datetime, timezone

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now(timezone.utc).strftime(fmt)


request = json.load(sys.stdin)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now
rendered = env.from_string(request["template"]).render(
    messages=request["messages"],
    tools=request.get("tools"),
    add_generation_prompt=request["add_generation_prompt"],
    bos_token=request["bos_token"],
    eos_token=request["eos_token"],
)
json.dump({"rendered": rendered}, sys.stdout, ensure_ascii=False)
