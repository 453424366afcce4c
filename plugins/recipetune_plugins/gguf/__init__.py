"""GGUF export for llama.cpp: write (``writer``), describe the tokenizer (``vocab``), quantize
with llama.cpp's own quantizer (``quantize``), check against transformers (``verify``) and
write an Ollama ``Modelfile`` (``modelfile``). The ``gguf`` exporter (``exporter``) ties them
together. Needs only pip packages: ``gguf`` and ``llama-cpp-python``."""
