"""Models: the one `LLM` interface and its value types (base), what endpoints accept (endpoints), specs to
models and local Hugging Face models (models), continuous batching (engine, sampling), chat formats.
torch lives here and below; nothing here imports a stage."""
