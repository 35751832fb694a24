"""The peer benchmark's table from its JSON (results/peers.json), as text and as markdown.

peers.json: {"command", "date", "machine", "setting": {...},
             "rows": [{"method", "family", "seed", "final_accuracy", "average_incremental_accuracy",
                       "forgetting", "tflops", "wall_seconds", "peak_mem_bytes", "error", ...}]}
Accuracies are fractions; the table shows mean ± std (sample std) over the seeds that ran, in %.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metrics import mean_std

ORDER = ("evo", "closed-form", "avalanche", "joint")
COLUMNS = ("method", "family", "seeds", "final acc %", "avg inc acc %", "forgetting %", "TFLOPs", "wall s",
           "peak GiB", "errors")


def summary_rows(doc: dict) -> list[dict]:
    methods: dict[str, list[dict]] = {}
    for r in doc["rows"]:
        methods.setdefault(r["method"], []).append(r)
    out = []
    for method, rows in methods.items():
        ok = [r for r in rows if r.get("error") is None]
        errors = sorted({r["error"] for r in rows if r.get("error") is not None})

        def ms(key, rows=ok):
            return mean_std([r.get(key) for r in rows])

        mem = mean_std([r["peak_mem_bytes"] / 2**30 for r in ok if r.get("peak_mem_bytes")])
        out.append({"method": method, "family": rows[0]["family"], "seeds": len(ok), "n": len(rows),
                    "final_accuracy": ms("final_accuracy"), "average_incremental_accuracy": ms("average_incremental_accuracy"),
                    "forgetting": ms("forgetting"), "tflops": ms("tflops"), "wall_seconds": ms("wall_seconds"),
                    "peak_gib": mem, "errors": errors})
    out.sort(key=lambda s: (ORDER.index(s["family"]) if s["family"] in ORDER else 9,
                            -(s["final_accuracy"] or (0, 0))[0]))
    return out


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v[0]:.2f} ± {100 * v[1]:.2f}"


def _num(v, fmt="{:.3g}") -> str:
    return "—" if v is None else f"{fmt.format(v[0])} ± {fmt.format(v[1])}"


def cells(s: dict) -> list[str]:
    return [s["method"], s["family"], f"{s['seeds']}/{s['n']}", _pct(s["final_accuracy"]),
            _pct(s["average_incremental_accuracy"]), _pct(s["forgetting"]), _num(s["tflops"]),
            _num(s["wall_seconds"], "{:.0f}"), _num(s["peak_gib"], "{:.2f}"), "; ".join(s["errors"]) or ""]


def markdown(doc: dict) -> str:
    rows = [cells(s) for s in summary_rows(doc)]
    lines = [f"Command: `{doc['command']}`  ", f"Date: {doc['date']}; machine: {doc['machine']}  ",
             f"Setting: {json.dumps(doc['setting'])}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text(doc: dict) -> str:
    rows = [COLUMNS, *[cells(s) for s in summary_rows(doc)]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


if __name__ == "__main__":
    print(text(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "peers.json")
                          .read_text())))
