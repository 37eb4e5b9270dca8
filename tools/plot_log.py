"""Plot one or more train_gpt.py logs.

Usage:  python tools/plot_log.py LOG [LOG ...] -o out.png
Panels: train loss vs step; val_bpb vs step (dashed/dotted lines = the final
round-trip / sliding / TTT scores); TTT running bpb vs chunk.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logparse import parse_log  # noqa: E402

FINAL_STYLES = {"roundtrip": ("--", "int5 round-trip"), "sliding": (":", "sliding"),
                "ttt_final": ("-.", "legal TTT")}


def _label(path, parsed):
    run_id = parsed["hparams"].get("run_id")
    name = os.path.basename(path)
    return f"{name} ({run_id})" if run_id else name


def plot(paths, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pip install -r tools/requirements.txt")
        return 1
    fig, (ax_tr, ax_val, ax_ttt) = plt.subplots(1, 3, figsize=(18, 5))
    filled = {ax_tr: False, ax_val: False, ax_ttt: False}
    for i, path in enumerate(paths):
        p = parse_log(path)
        label = _label(path, p)
        color = f"C{i % 10}"  # same colour for a log in every panel
        if p["train"]:
            steps, losses, _ = zip(*p["train"])
            ax_tr.plot(steps, losses, color=color, label=label)
            filled[ax_tr] = True
        if p["val"]:
            steps, _, bpbs = zip(*p["val"])
            ax_val.plot(steps, bpbs, marker="o", ms=3, color=color, label=label)
            filled[ax_val] = True
        for key, (style, name) in FINAL_STYLES.items():
            if p[key] is not None:
                ax_val.axhline(p[key][1], ls=style, color=color, lw=1,
                               label=f"{label}: {name} {p[key][1]:.4f}")
                filled[ax_val] = True
        if p["ttt"]:
            chunks, _, bpbs = zip(*p["ttt"])
            ax_ttt.plot(chunks, bpbs, color=color, label=label)
            filled[ax_ttt] = True
    titles = {ax_tr: ("train loss", "step", "train loss (nats)"),
              ax_val: ("validation", "step", "val_bpb"),
              ax_ttt: ("TTT running bpb", "chunk", "bpb")}
    for ax, (title, xl, yl) in titles.items():
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        if filled[ax]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                    fontsize=14, color="gray")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="Plot train_gpt.py logs.")
    ap.add_argument("logs", nargs="+")
    ap.add_argument("-o", "--output", default="log.png", help="output PNG (default log.png)")
    args = ap.parse_args(argv)
    return plot(args.logs, args.output)


if __name__ == "__main__":
    sys.exit(main())
