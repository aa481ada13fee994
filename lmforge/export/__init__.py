"""Models in and out: Hugging Face export and import, GGUF export.

Above lm/ (it reads run folders and builds models) and below the CLI; `hf` writes a Transformers
folder, `hf_import` reads one into a run folder, `gguf` writes a llama.cpp file, `arch` holds the
one mapping between lmforge's tensors and each standard architecture.
"""
