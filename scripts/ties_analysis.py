#!/usr/bin/env python3
"""What the tying agent did in a run: reads RUN/ties.jsonl (and
RUN/config.toml for the block count) and prints, per window of training
steps, how often the table changed, the unique blocks, the share of
explored decisions, and the mean reward of each kind of action (tie, untie,
keep independent, re-tie to the same slot), with standard errors.

    python3 scripts/ties_analysis.py RUN [RUN ...] [--window 250]

Only the standard library; used for benches/results/tying-diagnosis-*.md.
"""
import json
import math
import sys


def load(run):
    ties = [json.loads(line) for line in open(f"{run}/ties.jsonl") if line.strip()]
    n_layer, zero = None, False
    for line in open(f"{run}/config.toml"):
        key, _, value = line.partition("=")
        if key.strip() == "n_layer":
            n_layer = int(value)
        if key.strip() == "init_ties":
            zero = value.strip().strip('"') == "zero"
    return ties, n_layer, zero


def mean_se(xs):
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def kind(prev_state, rec):
    layer, action = rec["layer"], rec["action"]
    if action == layer:
        return "untie" if prev_state[layer] != layer else "keep"
    return "tie" if rec["state_after"] != prev_state else "same"


def analyse(run, window):
    ties, n_layer, zero = load(run)
    state = [0] * n_layer if zero else list(range(n_layer))
    rows = {}
    for rec in ties:
        w = (rec["step"] - 1) // window
        row = rows.setdefault(w, {"n": 0, "changes": 0, "explored": 0, "unique": [],
                                  "reward": {"tie": [], "untie": [], "keep": [], "same": []}})
        k = kind(state, rec)
        row["n"] += 1
        row["changes"] += rec["state_after"] != state
        row["explored"] += rec["explored"]
        row["unique"].append(len(set(rec["slots_after"])))
        row["reward"][k].append(rec["reward"])
        state = rec["state_after"]
    print(f"# {run}: {len(ties)} decisions, {n_layer} blocks")
    print("steps        | decisions | changes | explored | unique blocks (mean, min-max) |"
          " reward tie (n) | reward untie (n) | reward keep (n)")
    for w in sorted(rows):
        r = rows[w]
        u = r["unique"]
        cells = []
        for k in ["tie", "untie", "keep"]:
            m, se = mean_se(r["reward"][k])
            cells.append(f"{m:+.4f}±{se:.4f} ({len(r['reward'][k])})")
        print(f"{w * window + 1:>5}-{(w + 1) * window:<6} | {r['n']:>9} | {r['changes']:>7} |"
              f" {r['explored'] / r['n']:>8.2f} | {sum(u) / len(u):>5.2f} ({min(u)}-{max(u)})"
              f"                 | " + " | ".join(cells))
    final = ties[-1]["state_after"] if ties else None
    print(f"final state: {final}")


def main():
    args = sys.argv[1:]
    window = 250
    if "--window" in args:
        i = args.index("--window")
        window = int(args[i + 1])
        del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    for run in args:
        analyse(run, window)


if __name__ == "__main__":
    main()
