"""Small models and data made inside the tests: nothing is downloaded."""
import contextlib

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyCNN(nn.Module):
    """conv + bn + linear, with the extras OpenOOD networks expose."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, num_classes)

    def get_fc(self):
        return self.fc.weight.detach().numpy(), self.fc.bias.detach().numpy()

    def forward(self, x, return_feature=False):
        feature = self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)
        logits = self.fc(feature)
        return (logits, feature) if return_feature else logits


def separable_data(n=96, num_classes=3, seed=0, noise=0.3, flip=0.08):
    """Images whose class is a bright quadrant: separable, with a few noisy labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = noise * torch.randn(n, 1, 8, 8, generator=g)
    for c in range(num_classes):
        r, col = divmod(c, 2)
        x[y == c, :, r * 4:(r + 1) * 4, col * 4:(col + 1) * 4] += 1.0
    flipped = torch.rand(n, generator=g) < flip
    y = torch.where(flipped, (y + 1) % num_classes, y)
    return x, y


def loader(n=96, batch_size=32, shuffle=False, seed=0, dict_batches=False, flip=0.08):
    x, y = separable_data(n, seed=seed, flip=flip)
    if dict_batches:
        data = [{"data": x[i:i + batch_size], "label": y[i:i + batch_size]}
                for i in range(0, n, batch_size)]
        return data
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def seeded_loader(seed=5, batch_size=32):
    """The separable data shuffled by a loader-owned generator, as a restart rebuilds it."""
    x, y = separable_data(96)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


class CountingLoader:
    """Wraps a loader (len, generator, sampler... pass through): counts the batches drawn in
    ``seen``, and raises ``exc`` when batch ``stop_at`` (counted over all epochs) is asked for."""

    def __init__(self, inner, stop_at=None, exc=KeyboardInterrupt):
        self.inner, self.stop_at, self.exc, self.seen = inner, stop_at, exc, 0

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __iter__(self):
        for batch in self.inner:
            if self.seen == self.stop_at:
                raise self.exc()
            self.seen += 1
            yield batch


def trained_model(epochs=60, seed=0):
    torch.manual_seed(seed)
    model = TinyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = loader()
    for _ in range(epochs):
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def masked_model(keep=0.8, threshold="layer", seed=0, **kw):
    """A TinyCNN (weights seeded 123) with score masks whose scores are drawn from ``seed``."""
    from um_plugin.core.masks import attach_score_masks
    torch.manual_seed(123)
    model = TinyCNN()
    attach_score_masks(model, keep, threshold=threshold,
                       generator=torch.Generator().manual_seed(seed), **kw)
    return model


def fresh_copy(model):
    """A new TinyCNN holding ``model``'s weights and buffers."""
    copy = TinyCNN()
    copy.load_state_dict(model.state_dict())
    return copy


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class TiedMLP(nn.Module):
    """Two Linear layers sharing one weight Parameter (as tied embeddings/heads do)."""

    def __init__(self, width=6):
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def free_port():
    """A free TCP port on the loopback interface, for a torch.distributed rendezvous."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_threads():
    """Threads of gloo process groups alive in this process (Linux names them), or None
    where threads cannot be listed."""
    import os
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    count = 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().startswith(("gloo", "pt_gloo"))
        except OSError:  # the thread ended meanwhile
            pass
    return count


@contextlib.contextmanager
def gloo_group(rank, world, *, port=None, init_file=None, timeout_s=None):
    """Join a gloo group for the block; leave it destroyed, with none of its threads left.

    Why: a spawned worker whose gloo threads outlive the group reaches interpreter shutdown with
    them running, and there it dies at random with SIGABRT ("terminate called without an active
    exception": a gloo thread dropping its last work needs the GIL of an interpreter being torn
    down). ``destroy_process_group`` frees the group only if nothing else holds it, and two
    kinds of things do: a live DistributedDataParallel (its ``process_group``), so the block
    must not leave one behind (build it in a function called inside the block); and a module
    imported while the group exists that captures ``dist.group.WORLD`` at import time (e.g. as a
    default argument): ``torch._dynamo``, which DDP's constructor imports, and ``diffdist``,
    which ``openood.trainers`` imports. So ``torch._dynamo`` is imported here first, and callers
    import the rest before the block. Leaving the block checks that no gloo thread is left, so a
    leak fails every time instead of one run in a few.
    """
    import datetime
    import gc
    import os

    import torch._dynamo  # noqa: F401  (see above: before the group exists)
    import torch.distributed as dist

    if port is not None:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    kwargs = {"init_method": f"file://{init_file}"} if init_file is not None else {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group("gloo", rank=rank, world_size=world, **kwargs)
    try:
        yield
    finally:
        dist.destroy_process_group()
        gc.collect()  # a DDP module in a reference cycle still holds the group
    left = gloo_threads()
    if left:
        raise RuntimeError(f"rank {rank}: {left} gloo thread(s) outlived destroy_process_group "
                           "(something still holds the process group); at interpreter exit "
                           "they abort this process at random")
