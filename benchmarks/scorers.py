"""Post-hoc OOD scores, two ways: the plug-in's own small scorers and OpenOOD's postprocessors.

The plug-in scorers reproduce OpenOOD's ``msp``, ``odin``, ``ebo`` and ``mls`` postprocessors
line by line (same settings: ODIN T=1000, noise 0.0014, gradient divided by the input std;
energy T=1), so a benchmark run without OpenOOD reports the numbers OpenOOD would.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SCORES = ("msp", "odin", "ebo", "mls")
ODIN_TEMPERATURE = 1000.0
ODIN_NOISE = 0.0014
EBO_TEMPERATURE = 1.0


# Scores that are functions of the logits alone: (pred, conf) from one forward pass.
LOGIT_SCORES: Dict[str, Callable] = {
    "msp": lambda logits: torch.softmax(logits, dim=1).max(dim=1)[::-1],
    "ebo": lambda logits: (logits.argmax(1),
                           EBO_TEMPERATURE * torch.logsumexp(logits / EBO_TEMPERATURE, dim=1)),
    "mls": lambda logits: logits.max(dim=1)[::-1],
}


def _from_logits(name: str) -> Callable:
    def scorer(net, x, std):
        with torch.no_grad():
            return LOGIT_SCORES[name](net(x))
    return scorer


def _odin(net, x, std):
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = net(x)
        labels = out.detach().argmax(1)
        loss = F.cross_entropy(out / ODIN_TEMPERATURE, labels)
        (grad,) = torch.autograd.grad(loss, x)
    step = (torch.ge(grad, 0).float() - 0.5) * 2
    step = step / torch.as_tensor(std, dtype=step.dtype, device=step.device).view(1, -1, 1, 1)
    with torch.no_grad():
        out = net(x.detach() - ODIN_NOISE * step) / ODIN_TEMPERATURE
        conf, pred = torch.softmax(out, dim=1).max(dim=1)
    return pred, conf


SCORERS: Dict[str, Callable] = {"msp": _from_logits("msp"), "odin": _odin,
                                "ebo": _from_logits("ebo"), "mls": _from_logits("mls")}


def check_scores(names) -> list:
    """Validate score names against the ones both paths provide."""
    names = list(names)
    bad = [n for n in names if n not in SCORERS]
    if bad:
        raise ValueError(f"unknown score(s) {bad}; valid: {list(SCORES)}")
    return names


def score(net: nn.Module, x: torch.Tensor, name: str, batch_size: int = 500,
          std=(0.5, 0.5, 0.5)) -> Tuple[torch.Tensor, torch.Tensor]:
    """(pred, conf) for every row of ``x`` under score ``name``; conf is higher for ID."""
    fn = SCORERS[check_scores([name])[0]]
    net.eval()
    device = next(net.parameters()).device
    preds, confs = [], []
    for i in range(0, len(x), batch_size):
        p, c = fn(net, x[i:i + batch_size].to(device), std)
        preds.append(p.cpu())
        confs.append(c.detach().cpu())
    return torch.cat(preds), torch.cat(confs)


def score_many(net: nn.Module, x: torch.Tensor, names, batch_size: int = 500,
               std=(0.5, 0.5, 0.5)) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Like :func:`score` for several names, with one forward pass for msp / ebo / mls.

    Those three are functions of the logits, so they share it; ODIN needs its own passes.
    The values are the same as :func:`score` gives one name at a time.
    """
    names = check_scores(names)
    net.eval()
    device = next(net.parameters()).device
    out = {n: ([], []) for n in names}
    from_logits = [n for n in names if n != "odin"]
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        if from_logits:
            with torch.no_grad():
                logits = net(xb)
            for n in from_logits:
                p, conf = LOGIT_SCORES[n](logits)
                out[n][0].append(p.cpu())
                out[n][1].append(conf.cpu())
        if "odin" in names:
            p, c = _odin(net, xb, std)
            out["odin"][0].append(p.cpu())
            out["odin"][1].append(c.cpu())
    return {n: (torch.cat(v[0]), torch.cat(v[1])) for n, v in out.items()}


def openood_postprocessor(name: str, id_name: str):
    """OpenOOD's own postprocessor for ``name`` with the settings the plug-in scorers use.

    Built from an in-memory config (no yml lookup, so no download), with OpenOOD's automatic
    hyper-parameter search off so ODIN keeps T=1000 / noise 0.0014 as in the paper's code.
    """
    from openood.evaluation_api.postprocessor import postprocessors
    from openood.utils import Config
    check_scores([name])
    args = {"odin": {"temperature": ODIN_TEMPERATURE, "noise": ODIN_NOISE},
            "ebo": {"temperature": EBO_TEMPERATURE}}.get(name, {})
    sweep = {"odin": {"temperature": [ODIN_TEMPERATURE], "noise": [ODIN_NOISE]},
             "ebo": {"temperature_list": [EBO_TEMPERATURE]}}.get(name, {})
    config = Config(**{"postprocessor": {"name": name, "APS_mode": False,
                                         "postprocessor_args": args,
                                         "postprocessor_sweep": sweep},
                       "dataset": {"name": id_name}})
    post = postprocessors[name](config)
    post.APS_mode = False
    post.hyperparam_search_done = True
    return post
