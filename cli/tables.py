"""The per-domain perplexity table that `ddk train-student` and `ddk eval` print."""

from __future__ import annotations

from typing import Any


def perplexity_table(rows: list[dict[str, Any]]) -> str:
    """One line per domain: sequences, student and teacher perplexity, their ratio."""
    head = f"{'domain':<20} {'seqs':>6} {'student ppl':>12} {'teacher ppl':>12} {'ratio':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['domain']:<20} {r['sequences']:>6} {r['student_ppl']:>12.3f} "
                     f"{r['teacher_ppl']:>12.3f} {r['ratio']:>8.3f}")
    return "\n".join(lines)
