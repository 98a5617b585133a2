"""How the classification task words its figures: progress lines, the report's parent paragraph (data, input,
parent, head replacement) and its winner-vs-baselines table."""

from __future__ import annotations

from typing import Any

from .base import final_rows, fmt


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


class ReportWording:
    """The wording half of :class:`~pruneopt.tasks.classification.ClassificationTask`."""

    def describe_error(self, error: float) -> str:
        return f"error {error:.4f}"

    def summary_extra(self, config: dict[str, Any]) -> dict[str, Any]:
        return {}

    def report_intro(self, summary: dict[str, Any]) -> list[str]:
        p = summary["parent"]
        if not p:
            return []
        lines = []
        if p.get("data"):
            lines += [f"Data: {p['data']}.", ""]
        feed = p.get("input")
        if feed:
            c, (h, w) = feed["channels"], feed["size"]
            lines += [f"Input: {c}x{h}x{w}, mean ({_numbers(feed['mean'])}), std ({_numbers(feed['std'])}); "
                      f"{feed['style']} augmentation + flip for training; fine-tunes on {feed['device']}.", ""]
        head = p.get("head")
        if head:
            lines += [f"Head replacement: the parent's {head['from_classes']}-class classifier ({head['module']}) "
                      f"was replaced by a {head['to_classes']}-class one, trained {head['epochs']} epoch(s) with the "
                      "rest frozen, before the search.", ""]
        if p.get("skipped_images"):
            lines += [f"Skipped images: {p['skipped_images']} could not be decoded (--skip-bad-images).", ""]
        origin = {"state dict": f"{p['spec']['arch']} from the state dict {p['source']} (torchvision naming)",
                  "folder": f"{p['spec']['arch']} from {p['source']}",
                  "trained": f"{p['spec']['arch']} trained in the run"}.get(p.get("kind", ""), p["source"])
        lines += [f"Parent: val error {fmt(p['val_error'])}, test error {fmt(p['test_error'])} ({origin}).", ""]
        return lines

    def report_finals(self, summary: dict[str, Any]) -> list[str]:
        lines = ["## Winner vs baselines (same final fine-tune)", "",
                 "| model | FLOPs fraction | MACs | params | R | val error | test error | test accuracy |",
                 "|---|---|---|---|---|---|---|---|"]
        for name, f in final_rows(summary):
            lines.append(f"| {name} | {f['flops_fraction']:.3f} | {f['macs']:,} | {f['params']:,} | "
                         f"{f['ratio']:.1f} | {fmt(f['val_error'])} | {fmt(f['test_error'])} | "
                         f"{fmt(1 - f['test_error'])} |")
        lines.append("")
        return lines

    def notes(self, summary: dict[str, Any]) -> list[str]:
        head = (summary.get("parent") or {}).get("head")
        if head:
            return [f"the parent's {head['from_classes']}-class head was replaced by a {head['to_classes']}-class one "
                    f"and trained {head['epochs']} epoch(s) before the search"]
        return []
