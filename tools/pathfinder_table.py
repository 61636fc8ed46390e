"""Print the Pathfinder results table (markdown) from ``tools/train_pathfinder.py --out`` reports.

Reports of the same model (same mode, steps, image size, training length, iterations and seed),
e.g. the training run and a later ``--load ... --eval-steps`` re-evaluation, are merged into one row:
training figures from the training report, IoUs from all of them.

    PYTHONPATH=. python tools/pathfinder_table.py docs/pathfinder_results/*_N*.json
"""
import argparse
import json
from typing import Dict, List, Tuple

MODEL_KEYS = ("mode", "steps", "image_size", "train_length", "iters", "seed", "lcp")


def lcp_setting(report: Dict) -> str:
    """The penalty a report's model was trained with: ``'-'`` without LCP, else e.g. ``'mean x 10'``
    (reports written before ``--lcp-reduction`` existed used the sum with their ``lcp_weight``)."""
    if report["mode"] not in ("cbptt", "crbp"):
        return "-"
    return f"{report.get('lcp_reduction', 'sum')} x {report.get('lcp_weight', 1.0):g}"


def _model_key(report: Dict) -> Tuple:
    return tuple(lcp_setting(report) if name == "lcp" else report[name] for name in MODEL_KEYS)


def merge_reports(reports: List[Dict]) -> Dict[Tuple, Dict]:
    """Group reports by model; returns ``key -> dict(train=report or None, iou={(len, steps): iou},
    trivial={len: iou})``."""
    rows: Dict[Tuple, Dict] = {}
    for report in reports:
        key = _model_key(report)
        row = rows.setdefault(key, dict(train=None, iou={}, trivial={}))
        if "train_time_s" in report:
            row["train"] = report
        for result in report["eval"]:
            steps = result.get("steps", report["steps"])  # reports before per-step evaluation
            row["iou"][(result["length"], steps)] = result["iou"]
            row["trivial"][result["length"]] = result["all_bright_iou"]
    return rows


def table(rows: Dict[Tuple, Dict], late_factor: int = 4) -> str:
    """Markdown: one row per model, IoU per test length at t = N and at t = ``late_factor`` x N
    (the dynamics past the training horizon; "-" where that step count was not evaluated)."""
    lengths = sorted({length for row in rows.values() for length, _ in row["iou"]})
    head = (["mode", "N", "LCP"] + [f"IoU {n} dashes{' (train)' if i == 0 else ''}"
                             for i, n in enumerate(lengths)]
            + [f"IoU {n}, t={late_factor}N" for n in lengths]
            + ["train peak RSS incr. (MiB)", "train time (s)", "final LCP", "fp residual at N"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {mode: i for i, mode in enumerate(("bptt", "cbptt", "rbp", "crbp"))}
    for key in sorted(rows, key=lambda k: (k[1], order.get(k[0], 9))):
        row, (mode, steps), lcp = rows[key], key[:2], key[MODEL_KEYS.index("lcp")]
        cell = lambda value: "-" if value is None else f"{value:g}"  # noqa: E731
        train = row["train"] or {}
        values = ([mode, str(steps), lcp] + [cell(row["iou"].get((n, steps))) for n in lengths]
                  + [cell(row["iou"].get((n, late_factor * steps))) for n in lengths]
                  + [cell(train.get("train_peak_rss_increase_mib")), cell(train.get("train_time_s")),
                     cell(train.get("final_lcp")), cell(train.get("final_fixed_point_residual"))])
        lines.append("| " + " | ".join(values) + " |")
    trivial = {n: v for row in rows.values() for n, v in row["trivial"].items()}
    lines.append("| every bright pixel = target | | | " + " | ".join(
        cell(trivial.get(n)) for n in lengths) + " |" + " |" * (len(head) - 3 - len(lengths)))
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="train_pathfinder.py --out JSON files")
    parser.add_argument("--late-factor", type=int, default=4,
                        help="the 'past the training horizon' columns show t = this x N")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        with open(path) as handle:
            reports.append(json.load(handle))
    text = table(merge_reports(reports), args.late_factor)
    print(text)
    return text


if __name__ == "__main__":
    main()
