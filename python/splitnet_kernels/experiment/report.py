"""The experiment's results shown: the tables as text (render) and the light ranker's value
captured against the per-request budget as a PNG (plot)."""

from __future__ import annotations

from .serving import processed

__all__ = ["render", "plot"]


def _cell(stats: dict, signed: bool = False, digits: int = 4) -> str:
    """mean [low, high]: the 95 % t-interval (the mean alone for one seed)."""
    form = f"{'+' if signed else ''}.{digits}f"
    if stats["n"] == 0:
        return "-"
    if stats["n"] == 1:
        return format(stats["mean"], form)
    return f"{stats['mean']:{form}} [{stats['low']:{form}}, {stats['high']:{form}}]"


def _table(lines, title: str, header: list[str], rows: list[list[str]], first: int = 26):
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(1, len(header))]
    lines.append(f"\n{title}")
    lines.append(f"  {header[0]:{first}s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header[1:], widths)))
    for row in rows:
        lines.append(f"  {row[0]:{first}s} " + " ".join(f"{c:>{w}s}" for c, w in zip(row[1:], widths)))


def render(result: dict) -> str:
    """The results as text: every interval a 95 % t-interval over seeds."""
    settings, data, low = result["settings"], result["data"], result["low_rate_objective"]
    objectives = list(data["objectives"])
    summary, k = result["summary"], settings["top_k"]
    lines = [f"metric learning for SplitNet: {settings['seeds']} seed(s), {data['users']:,} users, {data['ads']:,} ads, "
             f"{data['impressions']:,} impressions ({'every outcome' if data['multi_label'] else 'one outcome'} "
             f"per impression; {settings['test_fraction']:.0%} test, {settings['validation_fraction']:.0%} "
             f"validation), n={settings['dim']}, low_rank rank {settings['rank']}",
             f"  Adam(W) weight decay {settings['weight_decay']:g}, learning rate searched over "
             f"{', '.join(f'{r:g}' for r in settings['learning_rates'])} per variant on seed 0, early stopping "
             f"(patience {settings['patience']}, at most {settings['max_epochs']} epochs)",
             "  variant = kind:norm (one S_t per objective) or kind:norm:shared (the blog's: one S, a bias per "
             "objective); mean [95 % t-interval over seeds]",
             "  " + ", ".join(f"{name} base rate {facts['base_rate']:.2%}" for name, facts in data["objectives"].items())]
    _table(lines, "AUC per objective (test impressions, scored by sk.score with the exported metrics)",
           ["variant"] + objectives + [f"NE {low}", f"calibration {low}"],
           [[row] + [_cell(m[f"auc:{name}"]) for name in objectives] + [f"{m[f'ne:{low}']['mean']:.4f}",
                                                                       f"{m[f'calibration:{low}']['mean']:.3f}"]
            for row, m in summary.items()])
    ranked = {row: m for row, m in summary.items() if "value@1" in m}
    if ranked:
        _table(lines, f"light ranker: each of {settings['ranking_users']} users keeps {k} of all "
                      f"{data['ads']:,} ads (every objective) by bid x p through sk.topk(output='value'); value "
                      f"captured over the true top {k}'s; {low} recall and share in the kept set",
               ["variant", "value captured", "value at budget", f"{low} recall", f"{low} share"],
               [[row, _cell(m["value@1"]), _cell(m["value@budget"]) if "value@budget" in m else "-",
                 _cell(m["recall"]), f"{m['share']['mean']:.3f}"] for row, m in ranked.items()])
    keys = [f"auc:{name}" for name in objectives] + (["value@1", "recall"] if ranked else [])
    _table(lines, "paired differences, seed by seed (same data, split and starting towers)",
           ["variant - baseline"] + [key.replace("auc:", "AUC ").replace("value@1", "value")
                                     .replace("recall", f"{low} recall") for key in keys],
           [[pair] + [_cell(d[key], signed=True) if key in d else "-" for key in keys]
            for pair, d in result["paired"].items()], first=44)
    if result["cost"]:
        budget = result["budget_us"]
        _table(lines, f"serving one request through the kernels: T folds, then a scan of the pool by value "
                      f"(Candidates.topk(user, {k}, metrics, output='value'), one thread, its CPU time), fitted "
                      f"as fixed + per candidate; a budget of {budget:.1f} us per request "
                      f"({settings['budget_fraction']:.0%} of the cheapest kind's time for "
                      f"{settings['serving_candidates']:,} candidates)",
               ["kind", "fixed us", "ns/candidate", "us for the pool", "candidates in budget"],
               [[kind, f"{c['fixed_us']:.2f}", f"{c['ns_per_candidate']:.3f}",
                 f"{c['us'][max(c['us'])]:.1f}", f"{processed(c, budget, settings['serving_candidates']):,.0f}"]
                for kind, c in result["cost"].items()], first=10)
    for point, sweep in result["sweeps"].items():
        _table(lines, f"sweep {point} ({settings['sweep_seeds']} seeds, unit norm, one S_t per objective)",
               ["variant (- baseline)", f"AUC {low}", "value captured"],
               [[row, _cell(m[f"auc:{low}"]), _cell(m["value@1"]) if "value@1" in m else "-"]
                for row, m in sweep["summary"].items()]
               + [[pair, _cell(d[f"auc:{low}"], signed=True), _cell(d["value@1"], signed=True) if "value@1" in d
                   else "-"] for pair, d in sweep["paired"].items() if pair.endswith("diagonal:unit")], first=44)
    _table(lines, "training (the learning rate chosen on seed 0; the best epoch of each seed)",
           ["variant", "learning rate", "epochs"],
           [[row, f"{t['learning_rate']:g}", " ".join(str(e) for e in t["epochs"])]
            for row, t in result["training"].items()])
    if "time" in result:
        spent = result["time"]
        lines.append(f"\nran in {spent['wall_seconds']:.0f} s ({spent['cpu_seconds']:.0f} CPU s, "
                     f"{spent['workers']} worker process(es))")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """PNG: value captured against the per-request budget, one panel per norm, one line per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, costs = result["settings"], result["cost"]
    fractions = sorted(set(settings["fractions"]) | {1.0})
    rows = [row for row, m in result["summary"].items() if "value@1" in m and row.split(":")[0] in costs]
    norms = list(dict.fromkeys(row.split(":")[1] for row in rows))
    fig, axes = plt.subplots(1, max(1, len(norms)), figsize=(5 * max(1, len(norms)), 4.5), sharey=True, squeeze=False)
    kinds = list(costs)
    for ax, norm in zip(axes[0], norms):
        for row in (r for r in rows if r.split(":")[1] == norm):
            kind = row.split(":")[0]
            cost = costs[kind]
            x = [cost["fixed_us"] + cost["ns_per_candidate"] * 1e-3 * f * settings["serving_candidates"]
                 for f in fractions]
            y = [result["summary"][row][f"value@{f:g}"]["mean"] for f in fractions]
            ax.plot(x, y, "--s" if row.endswith(":shared") else "-o", color=f"C{kinds.index(kind) % 10}", label=row)
        ax.axvline(result["budget_us"], color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("per-request budget (us, measured through the kernels)")
        ax.set_title(f"{norm} embeddings", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel(f"value captured (mean of {settings['seeds']} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
