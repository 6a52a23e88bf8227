"""The judge: prompts, a cached transport and one aggregator per mode (core), verdict statistics
(verdicts), agreement with human pairs (check, `baize judge-check`), win rates (winrate) and MT-bench
interop (mtbench)."""
