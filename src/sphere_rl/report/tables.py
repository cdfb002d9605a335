"""Plain-text tables of run results (per-task success, return, r_e(K) and the proxy r_e(A) at task ends)."""

from __future__ import annotations

from typing import Any


def _at(values: list[Any], i: int) -> float:
    value = values[i] if i < len(values) else None
    return float("nan") if value is None else float(value)


def results_table(results: dict[str, Any]) -> str:
    """One column block per labelled RunResult; rows are tasks, then the average."""
    labels = list(results)
    tasks = results[labels[0]].tasks
    width = max(12, *(len(t) for t in tasks)) + 2
    head = f"{'task':<{width}}" + "".join(f"| {label:^34} " for label in labels)
    sub = f"{'':<{width}}" + "".join(f"| {'success':>8} {'return':>8} {'r_e(K)':>7} {'r_e(A)':>7} " for _ in labels)
    lines = [head, sub, "-" * len(sub)]
    for i, task in enumerate(tasks):
        cells = []
        for label in labels:
            r = results[label]
            cells.append(f"| {r.final_success[i]:>8.2f} {r.final_return[i]:>8.1f} "
                         f"{_at(r.ntk_rank, i):>7.1f} {_at(r.proxy_rank, i):>7.1f} ")
        lines.append(f"{task:<{width}}" + "".join(cells))
    lines.append("-" * len(sub))
    lines.append(f"{'average':<{width}}" + "".join(f"| {results[l].average_success:>8.2f} {'':>8} {'':>7} {'':>7} " for l in labels))
    return "\n".join(lines)
