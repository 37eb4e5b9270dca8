"""Per-seed final scores, their mean/std, and the challenge's significance rule.

Usage:
  python tools/significance.py NEW_LOG [NEW_LOG ...]
         [--baseline-logs LOG ...  |  --baseline-mean X --baseline-std S --baseline-n K]
         [--margin 0.005] [--alpha 0.01] [--metric final|ttt_final|sliding|roundtrip|prequant] [--unit nats|bpb]

Rule (in nats of val_loss): one-sided Welch t-test of H0: mean_base - mean_new <= margin,
  t = (mean_base - mean_new - margin) / sqrt(s_new^2/n_new + s_base^2/n_base),
  Welch-Satterthwaite dof; PASS if the one-sided p < alpha.
With baseline logs of the same seeds it also prints a paired one-sided t-test of the per-seed
improvements (same H0 and margin; not the challenge's rule, but less noisy for A/Bs on one
machine). --metric picks the score (default: the final one). --unit bpb tests val_bpb instead of val_loss
(margin in bpb): logs of different tokenizers must, since a token's nats differ with the vocabulary; the tool
refuses nats when the logs name different tokenizers.
The Student-t tail comes from scipy.stats (pip install -r tools/requirements.txt).
"""
import argparse
import math
import os
import statistics
import sys

import scipy.stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logparse import final_result, parse_log  # noqa: E402


def t_sf(t, dof):
    """P(T > t) for Student's t with `dof` (real, > 0) degrees of freedom."""
    return float(scipy.stats.t.sf(t, dof))


def welch_from_stats(mean_new, std_new, n_new, mean_base, std_base, n_base, margin=0.005):
    """One-sided Welch test of H0: mean_base - mean_new <= margin. Returns (t, dof, p)."""
    if n_new < 2 or n_base < 2:
        raise ValueError("Welch's test needs at least 2 samples on each side")
    v_new, v_base = std_new ** 2 / n_new, std_base ** 2 / n_base
    diff = mean_base - mean_new - margin
    se2 = v_new + v_base
    if se2 == 0.0:
        t = math.inf if diff > 0 else -math.inf
        return t, math.inf, (0.0 if diff > 0 else 1.0)
    t = diff / math.sqrt(se2)
    dof = se2 ** 2 / (v_new ** 2 / (n_new - 1) + v_base ** 2 / (n_base - 1))
    return t, dof, t_sf(t, dof)


def welch_one_sided(new, base, margin=0.005):
    """(t, dof, p) for H0: mean(base) - mean(new) <= margin (lower val_loss is better)."""
    return welch_from_stats(statistics.mean(new), statistics.stdev(new), len(new),
                            statistics.mean(base), statistics.stdev(base), len(base), margin)


def summarize(paths, title, metric="final", seeds=None, unit="nats", tokenizers=None):
    """Print one row per log; return (losses, bpbs); `seeds` collects {seed: val_loss (or val_bpb, unit bpb)},
    `tokenizers` each log's TOKENIZER_PATH."""
    print(f"{title}:")
    print(f"  {'log':<40} {'seed':>6} {'val_loss':>10} {'val_bpb':>10}  source")
    losses, bpbs = [], []
    for path in paths:
        parsed = parse_log(path)
        res = final_result(parsed, metric)
        seed = parsed["hparams"].get("seed", "?")
        if res is None:
            print(f"  {os.path.basename(path):<40} {seed!s:>6} {'-':>10} {'-':>10}  no final line, skipped")
            continue
        label, loss, bpb = res
        losses.append(loss)
        bpbs.append(bpb)
        if tokenizers is not None:
            tokenizers.add(parsed["hparams"].get("tokenizer_path"))
        if seeds is not None:
            if seed in seeds:
                print(f"  warning: seed {seed} appears twice; the paired test uses the last")
            seeds[seed] = bpb if unit == "bpb" else loss
        print(f"  {os.path.basename(path):<40} {seed!s:>6} {loss:>10.5f} {bpb:>10.5f}  {label}")
    if losses:
        sd = lambda xs: f"{statistics.stdev(xs):.5f}" if len(xs) > 1 else "n/a"
        print(f"  n={len(losses)}  mean val_loss {statistics.mean(losses):.5f} nats (std {sd(losses)})"
              f"  mean val_bpb {statistics.mean(bpbs):.5f} (std {sd(bpbs)})   [std: sample, ddof=1]")
    return losses, bpbs


def main(argv=None):
    ap = argparse.ArgumentParser(description="Per-seed results and the challenge's Welch test.")
    ap.add_argument("logs", nargs="+", help="logs of the new entry (e.g. one per seed)")
    ap.add_argument("--baseline-logs", nargs="+", metavar="LOG")
    ap.add_argument("--baseline-mean", type=float, help="baseline mean (val_loss in nats; val_bpb with --unit bpb)")
    ap.add_argument("--baseline-std", type=float, help="baseline sample std (the same unit)")
    ap.add_argument("--baseline-n", type=int, help="number of baseline runs")
    ap.add_argument("--margin", type=float, default=0.005, help="required improvement (nats; bpb with --unit bpb)")
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--metric", default="final", choices=["final", "ttt_final", "sliding", "roundtrip", "prequant"],
                    help="which score to compare (final: legal TTT, else sliding, else round trip)")
    ap.add_argument("--unit", default="nats", choices=["nats", "bpb"],
                    help="test val_loss in nats (the challenge's rule) or val_bpb (across tokenizers)")
    args = ap.parse_args(argv)

    new_seeds, base_seeds, tokenizers = {}, {}, set()
    losses, bpbs = summarize(args.logs, "new entry", args.metric, new_seeds, args.unit, tokenizers)
    new = bpbs if args.unit == "bpb" else losses
    unit = "bpb" if args.unit == "bpb" else "nats"
    if not new:
        print("error: no log has a final val_loss line")
        return 2
    if args.baseline_logs:
        losses, bpbs = summarize(args.baseline_logs, "baseline", args.metric, base_seeds, args.unit, tokenizers)
        base = bpbs if args.unit == "bpb" else losses
        if len(tokenizers) > 1 and args.unit == "nats":
            print(f"error: the logs ran {len(tokenizers)} tokenizers, whose tokens' nats do not compare: use --unit bpb")
            return 2
        if len(base) < 2:
            print("error: the baseline needs at least 2 runs with a final line")
            return 2
        mb, sb, nb = statistics.mean(base), statistics.stdev(base), len(base)
    elif None not in (args.baseline_mean, args.baseline_std, args.baseline_n):
        mb, sb, nb = args.baseline_mean, args.baseline_std, args.baseline_n
        print(f"baseline: n={nb} mean {mb:.5f} {unit} (std {sb:.5f})")
    else:
        if any(v is not None for v in (args.baseline_mean, args.baseline_std, args.baseline_n)):
            print("error: give all of --baseline-mean, --baseline-std and --baseline-n")
            return 2
        return 0
    if len(new) < 2:
        print("error: the significance test needs at least 2 new runs")
        return 2
    t, dof, p = welch_from_stats(statistics.mean(new), statistics.stdev(new), len(new),
                                 mb, sb, nb, args.margin)
    print(f"Welch one-sided test, H0: mean_base - mean_new <= {args.margin} {unit}")
    print(f"  improvement {mb - statistics.mean(new):+.5f} {unit}  t={t:.4f}  dof={dof:.2f}  p={p:.3g}")
    print(f"  {'PASS' if p < args.alpha else 'FAIL'} (p {'<' if p < args.alpha else '>='} {args.alpha})")
    paired = sorted(set(new_seeds) & set(base_seeds), key=str)
    if len(paired) >= 2:  # same seeds on both sides: the per-seed differences carry less noise
        d = [base_seeds[k] - new_seeds[k] for k in paired]
        sd = statistics.stdev(d)
        m = statistics.mean(d) - args.margin
        tp = m / (sd / math.sqrt(len(d))) if sd > 0 else math.copysign(math.inf, m) if m else 0.0
        print(f"paired by seed {paired}: improvements ({unit}) " + " ".join(f"{x:+.5f}" for x in d))
        print(f"  mean {statistics.mean(d):+.5f}  paired one-sided t={tp:.4f} dof={len(d) - 1}  "
              f"p={t_sf(tp, len(d) - 1):.3g} (H0: improvement <= {args.margin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
