"""Evaluation: `baize eval` (evaluate: answers, verdicts, scores, NLL) and its report (report)."""
