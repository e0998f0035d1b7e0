"""Local models: the catalog of model cards, model files, and the llama.cpp runtime."""
