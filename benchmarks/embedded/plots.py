"""PNG plots for the embedded benchmark (matplotlib, Agg backend, no display needed)."""
from __future__ import annotations

import os

import numpy as np

from um_plugin.core import MODES

from .records import SUMMARY_ROWS, BenchResult


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: str, name: str) -> str:
    """Lay out, write ``out/name`` as PNG, free the figure; returns the path."""
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def make_all(result: BenchResult, out: str, set_split) -> list:
    """Write every plot the data allows; returns the paths written."""
    paths = []
    if not result.seeds:
        return paths
    for fn in (_histograms, _finetune_loss, _stage, _xi_sweep):
        try:
            p = fn(result, out, set_split)
        except (KeyError, ValueError, IndexError, AttributeError):
            p = None  # a plot whose inputs a partial run lacks is skipped, not fatal
        if p:
            paths.extend(p if isinstance(p, list) else [p])
    return paths


def _histograms(result, out, set_split):
    hist = result.hist
    if not hist:
        return None
    plt = _plt()
    methods = ["baseline"] + [m for m in MODES if m in hist]
    paths = []
    for score in hist["baseline"]:
        fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 3.8), squeeze=False)
        for ax, method in zip(axes[0], methods):
            by = hist[method][score]
            vals = np.concatenate([by[k][1] for k in ["id_test"] + list(set_split)])
            lo, hi = np.percentile(vals, 0.5), np.percentile(vals, 99.5)
            bins = np.linspace(lo, hi, 50)
            ax.hist(by["id_test"][1], bins=bins, alpha=0.6, density=True, label="ID (MNIST test)",
                    color="k")
            for s in set_split:
                ax.hist(by[s][1], bins=bins, histtype="step", density=True, label=s, lw=1.4)
            ax.set_title(f"{method} ({score}), seed {next(iter(result.seeds))}")
            ax.set_xlabel(f"{score} score (higher = more ID)")
        axes[0][0].legend(fontsize=7)
        paths.append(_save(fig, out, f"hist_{score}.png"))
    return paths


def _finetune_loss(result, out, set_split):
    rec = next(iter(result.seeds.values()))
    modes = [m for m in ("ce", *MODES) if m in rec.models]
    if not modes:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in modes:
        h = rec.models[m].history
        line, = ax.plot(range(1, len(h.loss) + 1), h.loss, marker="o", ms=3,
                        label=f"{m} train loss")
        if m != "ce":
            ax.axhline(h.xi, ls="--", color=line.get_color(), label=f"{m} ξ = {h.xi:.3g}")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("train objective |CE − ξ| + ξ (plain CE for ce)")
    ax.set_yscale("log")
    ax.set_title("fine-tuning loss vs the ξ line (seed %s)" % next(iter(result.seeds)))
    ax.legend(fontsize=8)
    return _save(fig, out, "finetune_loss.png")


def _stage(result, out, set_split):
    seeds = [r for r in result.seeds.values() if r.stage]
    if not seeds:
        return None
    plt = _plt()
    first = seeds[0].stage[0].scores
    score = "msp" if "msp" in first else next(iter(first))
    rows = [r for r in SUMMARY_ROWS if r in first[score].auroc] + list(set_split)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [e.epoch for e in seeds[0].stage]
    for i, row in enumerate(rows):
        curves = np.array([[e.scores[score].auroc[row] for e in r.stage] for r in seeds])
        mu = curves.mean(0)
        ax = axes[0] if row.endswith("ood") else axes[1]
        b = int(np.argmax(mu))
        # the best / final values go in the legend: text beside the points overlapped
        line, = ax.plot(epochs, mu, lw=2 if row.endswith("ood") else 1.2,
                        label=f"{row}: best {mu[b]:.1f} @{epochs[b]}, final {mu[-1]:.1f}")
        ax.scatter([epochs[b]], [mu[b]], color=line.get_color(), marker="*", s=120, zorder=3)
        ax.scatter([epochs[-1]], [mu[-1]], color=line.get_color(), marker="s", s=30, zorder=3)
    acc = np.array([[e.scores[score].acc for e in r.stage] for r in seeds]).mean(0)
    ax2 = axes[0].twinx()
    ax2.plot(epochs, acc, color="gray", ls=":", label="ID test acc")
    ax2.set_ylabel("ID test accuracy (%)", color="gray")
    for ax, title in zip(axes, ("near / far mean", "per OOD set")):
        ax.set_xlabel("training epoch of the base LeNet")
        ax.set_ylabel(f"{score.upper()} AUROC (%)")
        ax.set_title(f"{title}: ★ intermediate best, ■ final ({len(seeds)} seeds)")
        ax.legend(fontsize=7, loc="best")
    return _save(fig, out, "stage_auroc.png")


def _xi_sweep(result, out, set_split):
    seeds = list(result.seeds.values())
    modes = [m for m in MODES if m in seeds[0].sweeps]
    if not modes:
        return None
    plt = _plt()
    base = seeds[0].models["baseline"].metrics
    score = "ebo" if "ebo" in base else next(iter(base))

    def value(m, row, metric):
        return m.acc if row == "acc" else m.sets[row].get(metric)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = [("AUROC", "AUROC (%)"), ("FPR@95", "FPR@95 (%)"), ("ACC", "ID accuracy (%)")]
    for mode, style in zip(modes, ("-o", "--s")):
        xis = np.array([[e.xi for e in r.sweeps[mode]] for r in seeds]).mean(0)
        order = np.argsort(xis)
        for ax, (metric, ylabel) in zip(axes, panels):
            rows = ["acc"] if metric == "ACC" else [r for r in SUMMARY_ROWS if r in base[score].sets]
            for row in rows:
                vals = np.array([[value(e.metrics[score], row, metric) for e in r.sweeps[mode]]
                                 for r in seeds]).mean(0)
                ax.plot(xis[order], vals[order], style, label=f"{mode} {row}")
            ax.set_xscale("log")
            ax.set_xlabel("ξ (mean over seeds)")
            ax.set_ylabel(ylabel)
    for ax, (metric, _) in zip(axes, panels):
        for row in (["acc"] if metric == "ACC" else [r for r in SUMMARY_ROWS if r in base[score].sets]):
            v = np.mean([value(r.models["baseline"].metrics[score], row, metric) for r in seeds])
            ax.axhline(v, color="gray", ls=":", lw=1)
        ax.legend(fontsize=7)
    axes[0].set_title(f"{score}: OOD AUROC vs ξ (dotted: baseline)")
    axes[1].set_title(f"{score}: FPR@95 vs ξ")
    axes[2].set_title("ID accuracy vs ξ")
    return _save(fig, out, "xi_sweep.png")
