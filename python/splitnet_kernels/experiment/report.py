"""The experiment's results shown: the table as text (render) and AUC against cost as a PNG (plot)."""

from __future__ import annotations

__all__ = ["render", "plot"]


def _cell(stats: dict, digits: int = 4) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def render(result: dict) -> str:
    """The results table as text."""
    settings, data = result["settings"], result["data"]
    k = settings["top_k"]
    lines = [f"metric learning for SplitNet: {result['seeds']} seed(s), {data['users']:,} users, {data['ads']:,} ads, "
             f"{data['impressions']:,} impressions ({settings['test_fraction']:.0%} held out), n={settings['dim']}, "
             f"low_rank rank {settings['rank']}, {settings['epochs']} epochs; mean ± std over seeds",
             "  '+obj': a bias and a scale per objective; without it one shared bias"]
    for name, facts in data["objectives"].items():
        lines.append(f"\nobjective {name} (base rate {facts['base_rate']:.2%})")
        lines.append(f"  {'variant':14s} {'AUC':>17s} {'NE':>17s} {'calibration':>17s} {f'recall@{k}':>17s}")
        for variant, per_objective in result["summary"].items():
            row = per_objective[name]
            lines.append(f"  {variant:14s} {_cell(row['auc']):>17s} {_cell(row['ne']):>17s} "
                         f"{_cell(row['calibration']):>17s} {_cell(row['recall_at_k']):>17s}")
    low = result["low_rate_objective"]
    for baseline, differences in result["paired_auc_difference"].items():
        lines.append(f"\n{low} AUC minus {baseline}'s, paired seed by seed")
        lines.extend(f"  {variant:14s} {stats['mean']:+.4f} ± {stats['std']:.4f}"
                     for variant, stats in differences.items())
    lines.append(f"\nserving cost: one user x {settings['serving_candidates']:,} candidates through sk.score "
                 "(S folded into the user once); per pair: every pair its own user")
    lines.append(f"  {'variant':14s} {'head params':>11s} {'ns/candidate':>12s} {'candidates/ms':>13s} "
                 f"{'ns/pair':>9s}")
    for variant, c in result["cost"].items():
        lines.append(f"  {variant:14s} {c['head_parameters']:11,d} {c['ns_per_candidate']:12.3f} "
                     f"{c['candidates_per_ms']:13,.0f} {c['ns_per_pair_unfolded']:9.3f}")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """PNG: AUC on the low-base-rate objective against cost per candidate, folded and per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low = result["low_rate_objective"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    panels = ((axes[0], "ns_per_candidate", "serving: one user x many candidates (S folded into the user)"),
              (axes[1], "ns_per_pair_unfolded", "per pair: every pair its own user (training, re-scoring)"))
    for ax, key, title in panels:
        for i, (variant, cost) in enumerate(result["cost"].items()):
            stats = result["summary"][variant][low]["auc"]
            ax.errorbar(cost[key], stats["mean"], yerr=stats["std"], fmt="s" if variant.endswith("+obj") else "o",
                        color=f"C{i % 10}", capsize=3, label=variant)
        ax.set_xlim(0, 1.35 * max(cost[key] for cost in result["cost"].values()))
        ax.set_xlabel("ns per candidate (measured)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"AUC on {low} (mean ± std, {result['seeds']} seed(s))")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
