"""Test probe inside every process of a launched ``main.py`` run (tests/test_openood_launch*.py
put this folder first on PYTHONPATH, so each interpreter, spawned ranks included, imports it).

What a rank holds (weights, masks, sampler order) cannot be read from outside the process, so
with ``UM_PROBE_DIR`` set each rank saves, after every fine-tuning epoch, what the tests compare
across ranks and runs. ``UM_PROBE_NAN_RANK`` / ``UM_PROBE_KILL_RANK`` make that rank's second
epoch see a NaN input / SIGKILL itself, so the fault tests run the real launcher.
"""
import os

if os.environ.get("UM_PROBE_DIR"):
    import signal

    import torch
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    from um_plugin.core import finetune
    from um_plugin.core.masks import iter_score_masks

    _train_epoch, _step = finetune.Finetuner.train_epoch, finetune.Finetuner.step

    def _rank():
        return dist.get_rank() if dist.is_initialized() else 0

    def _faulty(name, epoch):
        return os.environ.get(name) == str(_rank()) and epoch == 1

    def step(self, x, y, *, epoch=0, index=0, **kwargs):
        if _faulty("UM_PROBE_KILL_RANK", epoch):
            os.kill(os.getpid(), signal.SIGKILL)
        if _faulty("UM_PROBE_NAN_RANK", epoch):
            x = torch.full_like(x, float("nan"))
        return _step(self, x, y, epoch=epoch, index=index, **kwargs)

    def train_epoch(self, loader, epoch=None, **kwargs):
        sampler = getattr(loader, "sampler", None)
        order = list(sampler) if isinstance(sampler, DistributedSampler) else None  # no RNG use
        stats = _train_epoch(self, loader, epoch, **kwargs)
        masks = {}
        for name, _, mask in iter_score_masks(self.model):
            mask.group.refresh()
            masks[name] = mask.mask.detach().clone()
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch.save({"xi": self.xi, "order": order, "loss": stats["loss"], "state": state,
                    "masks": masks, "world": dist.get_world_size() if dist.is_initialized() else 1},
                   os.path.join(os.environ["UM_PROBE_DIR"], f"rank{_rank()}_epoch{epoch}.pt"))
        return stats

    finetune.Finetuner.train_epoch, finetune.Finetuner.step = train_epoch, step
