"""Benchmark tables and plot: results.csv / results.md, table3.md (quantization) and score vs TPS."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from model.files import atomic_path, atomic_write

COLUMNS = ["name", "kind", "preset", "batch_size", "quant", "num_prompts", "tokens", "forwards", "network_calls",
           "tpf", "tps", "tps_best", "wall_s", "latency_p50_s", "latency_p95_s", "peak_mem_mb", "model_mb", "score",
           "agreement_with_unquantized", "x_unquantized", "score_minus_unquantized", "x_reference", "x_autoregressive",
           "same_tokens_as", "deterministic",
           "load_average_max", "edits_per_sample", "edit_fixes", "edit_breaks", "edit_neutral", "edit_oscillations",
           "oscillations_per_100_tokens", "edit_precision"]


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def add_comparisons(records: list[dict]) -> list[dict]:
    """Add speed-ups over the baselines, agreement of quantized outputs with unquantized ones, and
    which other entries produced exactly the same tokens on the prompts they share."""
    by_name = {r["name"]: r for r in records}
    ref, ar = by_name.get("reference"), by_name.get("autoregressive")
    out = []
    for r in records:
        r = dict(r)
        r["x_reference"] = r["tps"] / ref["tps"] if ref and ref["tps"] else None
        r["x_autoregressive"] = r["tps"] / ar["tps"] if ar and ar["tps"] else None
        r["agreement_with_unquantized"] = r["x_unquantized"] = r["score_minus_unquantized"] = None
        if r["quant"] != "none":
            twin = next((o for o in records if o["quant"] == "none" and o["kind"] == r["kind"] and o["preset"] == r["preset"]
                         and o["batch_size"] == r["batch_size"] and o["prompt_indices"] == r["prompt_indices"]), None)
            if twin is not None:
                r["agreement_with_unquantized"] = _agreement(r["sequences"], twin["sequences"])
                r["unquantized"] = twin["name"]
                r["x_unquantized"] = r["tps"] / twin["tps"] if twin["tps"] else None  # the quantization speed-up
                if r.get("score") is not None and twin.get("score") is not None:
                    r["score_minus_unquantized"] = r["score"] - twin["score"]
        same = []
        for o in records:
            if o is r or o["name"] == r["name"]:
                continue
            shared = [i for i in r["prompt_indices"] if i in o["prompt_indices"]]
            if shared:
                mine = dict(zip(r["prompt_indices"], r["sequences"]))
                theirs = dict(zip(o["prompt_indices"], o["sequences"]))
                if all(mine[i] == theirs[i] for i in shared):
                    same.append(o["name"])
        r["same_tokens_as"] = ",".join(same)
        out.append(r)
    return out


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(records: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines) + "\n"


def table3(records: list[dict]) -> Optional[str]:
    """The paper's Table 3, small: TPS without/with quantization and the score change, per preset and batch."""
    rows = []
    for r in records:
        if r["kind"] != "setting" or r["quant"] == "none" or not r.get("unquantized"):
            continue
        base = next(o for o in records if o["name"] == r["unquantized"])
        delta = None if r["score"] is None or base["score"] is None else r["score"] - base["score"]
        rows.append({"preset": r["preset"], "batch": r["batch_size"], "quant": r["quant"],
                     "TPS (unquantized)": base["tps"], "TPS (quantized)": r["tps"],
                     "speed-up": r["tps"] / base["tps"] if base["tps"] else None,
                     "speed-up (best repeats)": (r["tps_best"] / base["tps_best"]
                                                 if base.get("tps_best") and r.get("tps_best") else None),
                     "score (unquantized)": base["score"], "score (quantized)": r["score"], "score change": delta,
                     "TPF (unq. / q.)": f"{base['tpf']:.2f} / {r['tpf']:.2f}",
                     "identical outputs": r["agreement_with_unquantized"]})
    if not rows:
        return None
    return markdown_table(rows, list(rows[0].keys()))


def plot_score_vs_tps(records: list[dict], path: Path, task: Optional[str]) -> Path:
    """One point per setting and baseline; y is the task score, or TPF when the prompts have no score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = all(r.get("score") is not None for r in records)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    markers = {"setting": "o", "reference": "s", "autoregressive": "^"}
    for r in records:
        y = r["score"] if scored else r["tpf"]
        ax.scatter(r["tps"], y, marker=markers.get(r["kind"], "o"), s=60, alpha=0.8, label=r["name"])
    ax.set_xscale("log")
    ax.set_xlabel("tokens per second (log scale)")
    if scored:
        ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel(f"score ({task})" if scored else "tokens per forward (no task score)")
    ax.set_title("score vs throughput per setting" if scored else "TPF vs throughput (random prompts: no score)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # the temporary name has no image suffix: say the format
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    finally:
        plt.close(fig)
    return path


def write_reports(records: list[dict], out_dir: Path, machine: dict, task: Optional[str]) -> dict[str, Path]:
    """results.csv, results.md (+ table3.md when quantized settings exist) and score_vs_tps.png."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({c: r.get(c) for c in COLUMNS})
    files = {"csv": atomic_write(out_dir / "results.csv", buf.getvalue())}
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    header = (f"Machine: {machine['cpu']} ({machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads"
              f"{gpu}), torch {machine['torch']}, torchao {machine.get('torchao')}, load average "
              f"{machine.get('load_average')}. Task: {task or 'random prompts (no score)'}. Medians over repeats, "
              f"warm-up excluded; latency = wall time of the batch a request was decoded in. Edits (one extra "
              "untimed pass, task prompts only): edits_per_sample, edit_precision = fixes / (fixes + breaks); the "
              "counts are in results.csv.\n\n")
    shown = ["name", "preset", "batch_size", "quant", "tps", "tps_best", "tpf", "forwards", "latency_p50_s", "latency_p95_s",
             "peak_mem_mb", "score", "edits_per_sample", "edit_precision", "agreement_with_unquantized",
             "x_unquantized", "x_reference", "x_autoregressive"]
    files["markdown"] = atomic_write(out_dir / "results.md", header + markdown_table(records, shown))
    t3 = table3(records)
    if t3:
        files["table3"] = atomic_write(out_dir / "table3.md", header + t3)
    files["plot"] = plot_score_vs_tps(records, out_dir / "score_vs_tps.png", task)
    return files
