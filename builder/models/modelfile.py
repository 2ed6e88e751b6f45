"""The Ollama Modelfile for a downloaded GGUF: a pure function of the model's path and parameters."""

from __future__ import annotations

import os
from pathlib import Path

from builder.core.errors import UserError, shown

# DeepSeek-R1 (and its distills) chat format: full-width bars and U+2581 in the special tokens. The same template
# Ollama's own deepseek-r1 models use; the reasoning (<think>...</think>) comes back in the assistant's content.
DEEPSEEK_R1_TEMPLATE = """{{- if .System }}{{ .System }}{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1}}
{{- if eq .Role "user" }}<｜User｜>{{ .Content }}
{{- else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}{{- if not $last }}<｜end▁of▁sentence｜>{{- end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<｜Assistant｜>{{- end }}
{{- end }}"""

TEMPLATES = {"deepseek-r1": DEEPSEEK_R1_TEMPLATE}
STOPS = {"deepseek-r1": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")}
TEMPERATURE = 0.6  # DeepSeek's recommendation for R1 (0.5 to 0.7)


def from_path(model: Path, modelfile: Path) -> str:
    """FROM's argument: relative to the Modelfile's folder (ollama resolves it from there) where both share a root."""
    model, folder = model.resolve(), modelfile.resolve().parent
    try:
        rel = os.path.relpath(model, folder)
    except ValueError:  # another drive (Windows)
        return str(model)
    return rel if rel.startswith("..") else "./" + rel


def render(model_ref: str, *, template: str | None, num_ctx: int, num_gpu: int | None) -> str:
    """Modelfile text. num_gpu: layers to offload to the GPU (None: let ollama decide)."""
    if template is not None and template not in TEMPLATES:
        raise UserError(f"no Modelfile template {shown(template)} (known: {', '.join(TEMPLATES)})")
    lines = [f"FROM {model_ref}", f"PARAMETER num_ctx {num_ctx}"]
    if num_gpu is not None:
        lines += [f"PARAMETER num_gpu {num_gpu}"]
    lines += [f"PARAMETER temperature {TEMPERATURE}"]
    if template is not None:
        lines += [f'PARAMETER stop "{stop}"' for stop in STOPS[template]]
        lines += [f'TEMPLATE """{TEMPLATES[template]}"""']
    return "\n".join(lines) + "\n"
