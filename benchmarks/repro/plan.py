"""What a reproduction will run, said against the authors' protocol, printed before any work.

Every setting is either the authors' (said once, in the "same as theirs" line) or named in
the "differs" lines; their README numbers are printed beside each row they have.
"""
from __future__ import annotations

from . import authors

NETWORK_NAMES = {"densenet_bc100": "their DenseNet-BC-100 (growth 12, non-affine BN, dropout 0.3)",
                 "resnet18_32x32": "OpenOOD's ResNet-18 (32x32)"}
THEIR_NETWORK = "densenet_bc100"


def _reference(suite: str, method: str) -> str:
    ref = authors.REFERENCE.get(suite, {}).get(method)
    if not ref:
        return "– | – | – | –"
    return " | ".join(f"{ref[m][0]:.2f} ({ref[m][1]:.2f})" for m in authors.METRICS)


def _row_line(suite: str, row: authors.Row, cfg: dict) -> str:
    epochs = "–" if row.epochs is None else cfg.get("epochs") or row.epochs
    lr = "–" if row.lr is None else cfg.get("lr") or row.lr
    mask = "–"
    if row.method.startswith("umap"):
        mask = f"keep {cfg['keep_ratio']}, {'weights frozen' if row.freeze_weights else 'weights trained'}"
    outliers = "OE, weight 0.5" if row.outlier_loss == "oe" else "–"
    batch = "–" if row.epochs is None else cfg["batch"]
    return (f"| {authors.ROW_NAMES[row.method]} | {row.method} | {epochs} | {lr} | {batch} | "
            f"{row.xi} | {outliers} | {mask} | {_reference(suite, row.method)} | {row.source} |")


def differences(rc, cfg: dict) -> list:
    """Every way this run departs from the authors' protocol, one phrase each."""
    out = []
    if rc.network != THEIR_NETWORK:
        out.append(f"network {rc.network} = {NETWORK_NAMES[rc.network]} (theirs: "
                   f"{NETWORK_NAMES[THEIR_NETWORK]})")
    for name, theirs in (("epochs", "each row's"), ("lr", "each row's")):
        if getattr(rc, name) is not None:
            out.append(f"--{name} {getattr(rc, name)} for every fine-tuned row (theirs: {theirs})")
    if cfg["batch"] != 256:
        out.append(f"batch {cfg['batch']} (theirs: 256)")
    if cfg["keep_ratio"] != 0.8 and "umap" in rc.methods:
        out.append(f"UMAP keep ratio {cfg['keep_ratio']} (theirs: 0.8)")
    other = [s for s in rc.scores if s != "ebo"]
    if other:
        out.append(f"scores {', '.join(other)} besides or instead of energy (theirs: energy)")
    if rc.xi is not None:
        out.append(f"xi {rc.xi} given (theirs: estimated)")
    if rc.xi_draws != 1:
        out.append(f"xi from {rc.xi_draws} random masks (theirs: 1)")
    if rc.dry_run:
        out.append("DRY RUN: random images and weights, 1 epoch of batch 4; numbers meaningless")
    return out


def plan_text(rc, cfg: dict) -> str:
    """The whole plan of ``rc`` (a validated ReproConfig) with the reference numbers."""
    suite = rc.suite
    if suite not in authors.THEIR_OOD_SETS:
        return (f"{suite}: the paper's ImageNet-1K protocol (ResNet-50, UMAP + ODIN); methods "
                f"{rc.methods}, scores {rc.scores}, {rc.runs} run(s)\n")
    same, missing = authors.available_sets(suite)
    table = {m: authors.rows(suite)[m] for m in rc.methods}
    lines = [
        f"python -m benchmarks.repro {suite}: the authors' CIFAR protocol "
        "(github.com/ZFancy/Unleashing-Mask)",
        f"network: {rc.network} = {NETWORK_NAMES[rc.network]}",
        f"base: --checkpoint; theirs is {authors.BASE_CHECKPOINT[suite]}",
        "xi: estimated once, on the augmented ID training images under one random mask keeping "
        "96.5% of each layer (their estimate_loss.py), shared by every run",
        f"scores: {', '.join(rc.scores)} (theirs: energy = ebo, T = 1)",
        f"OOD sets averaged, plain mean per metric as their ood_measure: "
        f"{', '.join(f'{o} (their {t})' for t, (o, _) in authors.OPENOOD_SAME.items() if o in same)}"
        f" = {len(same)} of their {len(authors.THEIR_OOD_SETS[suite])} sets",
        "missing (OpenOOD has not the same images): "
        + "; ".join(f"{name}: {why}" for name, why in missing),
        "",
        "| row | method | epochs | lr | batch | xi | outliers | UMAP mask | theirs AUROC | "
        "AUPR | FPR95 | ACC | their config |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_row_line(suite, row, cfg) for row in table.values()],
        "",
        "same as theirs: SGD momentum 0.9 without Nesterov, weight decay 1e-4, cosine lr set "
        "once per epoch, batch 256 (outlier batch 256 beside it), shuffled ID loader with the "
        "last batch kept, fp32, OOD scores on the final epoch's model",
    ]
    if any(row.outlier_loss != "none" for row in table.values()):
        lines.append(f"outliers differ: {authors.OE_OUTLIERS}; their OE rows average "
                     f"{', '.join(authors.THEIR_OE_OOD_SETS)} (LSUN twice), ours the sets above")
    lines += [f"differs: {d}" for d in differences(rc, cfg)]
    lines.append(f"runs: {rc.runs} (mean ± sample std over runs; run r seeds the data order "
                 "with r and UMAP's scores with 1 + r, apart from xi's mask; their std is over "
                 "their own repeated runs)")
    lines += [f"note: {n}" for n in authors.NOTES]
    return "\n".join(lines) + "\n"
