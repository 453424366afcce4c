"""An Ollama ``Modelfile`` beside the GGUF: Go-template chat format, stop tokens, parameters.

Ollama does not run Jinja; each chat family gets its Go template, chosen by the
markers in the Jinja template the model was trained with.
"""

from __future__ import annotations

OLLAMA_TEMPLATES: dict[str, tuple[str, str]] = {
    # family: (marker in the Jinja template, Go template)
    "chatml": ("<|im_start|>", "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
                               "{{ end }}<|im_start|>assistant\n"),
    "llama-3": ("<|start_header_id|>", "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
                                       "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "gemma": ("<start_of_turn>", "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model"
                                 "{{ else }}{{ .Role }}{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"),
    "phi-3": ("<|end|>", "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"),
    "zephyr": ("<|user|>", "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n"),
    "mistral": ("[INST]", "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]"
                          "{{ else if eq .Role \"assistant\" }} {{ .Content }}</s>{{ end }}{{ end }}"),
}


CHAT_CONTEXT = 4096
"""Tokens of context a chat gets in Ollama (system message, several turns, the answer) when the model allows it."""


def chat_context(trained_length: int | None, model_limit: int | None, wanted: int = CHAT_CONTEXT) -> int:
    """``num_ctx`` for a chat: room for a conversation, not the training ``max_seq_length`` (256 for the quickstart,
    which cut a chat off after a couple of turns), and never beyond what the model's positions cover."""
    context = max(wanted, int(trained_length or 0))
    return min(context, int(model_limit)) if model_limit else context


def template_family(chat_template: str | None) -> str | None:
    if not chat_template:
        return None
    for family, (marker, _) in OLLAMA_TEMPLATES.items():
        if marker in chat_template:
            return family
    return None


def modelfile_text(gguf_name: str, chat_template: str | None, stop_tokens: list[str], context_length: int,
                   temperature: float = 0.7) -> str:
    """The Modelfile for ``ollama create NAME -f Modelfile`` next to ``gguf_name``."""
    family = template_family(chat_template)
    lines = [f"# ollama create <name> -f Modelfile   (written by recipetune)", f"FROM ./{gguf_name}", ""]
    if family:
        lines.append(f'TEMPLATE """{OLLAMA_TEMPLATES[family][1]}"""')
    else:
        lines.append("# No Go template is known for this chat format; Ollama falls back to the GGUF's own chat template.")
    for stop in dict.fromkeys(t for t in stop_tokens if t):
        lines.append(f'PARAMETER stop "{stop}"')
    lines += [f"PARAMETER num_ctx {context_length}", f"PARAMETER temperature {temperature}", ""]
    return "\n".join(lines)
