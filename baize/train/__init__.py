"""Training: what SFT and DPO share (common), one module per recipe (sft, dpo), `baize train` (recipes),
CPU speedups and packing, FSDP (distributed), merged weights (merge) and GGUF export (export)."""
