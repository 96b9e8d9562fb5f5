"""``um-openood dataset-config NAME``: the dataset YAML main.py reads for an offline benchmark,
and with ``--benchmark-out`` the register_benchmark YAML ``um-openood eval --benchmark`` reads."""
from __future__ import annotations

import os

from .common import positive_int


def add_parser(sub) -> None:
    ds = sub.add_parser(
        "dataset-config", help="write the dataset YAML main.py needs for an offline benchmark",
        description="Write the dataset: YAML OpenOOD's main.py reads, for a benchmark in "
                    "OpenOOD's on-disk layout (the one register_benchmark takes): image lists "
                    "<data-root>/benchmark_imglist/NAME/{train,val,test}_NAME.txt unless given, "
                    "images under <data-root>/<data-dir>.")
    ds.add_argument("name", help="the benchmark's name (dataset.name)")
    ds.add_argument("--data-root", required=True, help="folder holding benchmark_imglist/")
    ds.add_argument("--out", required=True, help="YAML file to write")
    ds.add_argument("--num-classes", type=positive_int, required=True)
    ds.add_argument("--image-size", type=positive_int, required=True,
                    help="centre crop size (register_benchmark's image_size)")
    ds.add_argument("--pre-size", type=positive_int, default=None,
                    help="resize before the crop (default: image size)")
    ds.add_argument("--data-dir", default="images_classic/",
                    help="image folder relative to the data root (default: images_classic/)")
    for split in ("train", "val", "test"):
        ds.add_argument(f"--{split}", default=None, metavar="IMGLIST",
                        help=f"{split} image list relative to the data root "
                             f"(default: benchmark_imglist/NAME/{split}_NAME.txt)")
    ds.add_argument("--oe", default=None, metavar="IMGLIST",
                    help="image list of auxiliary outliers (relative to the data root): adds the "
                         "'oe' split that pipeline train_oe (trainers um_oe, umap_oe) reads")
    ds.add_argument("--normalization", default="default", metavar="TYPE",
                    help="'default' (mean = std = 0.5) or a name in OpenOOD's normalization_dict")
    ds.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    ds.add_argument("--benchmark-out", default=None, metavar="FILE",
                    help="also write the register_benchmark YAML um-openood eval --benchmark "
                         "reads (needs --ood-val, --near, --far)")
    ds.add_argument("--ood-val", default=None, metavar="IMGLIST",
                    help="OOD validation list (default benchmark_imglist/NAME/val_ood.txt)")
    for group in ("near", "far"):
        ds.add_argument(f"--{group}", default=None, metavar="SET[=IMGLIST],...",
                        help=f"{group}-OOD sets (imglist default "
                             "benchmark_imglist/NAME/test_SET.txt)")


def _lists(args) -> dict:
    return {split: getattr(args, split) or f"benchmark_imglist/{args.name}/{split}_{args.name}.txt"
            for split in ("train", "val", "test")}


def _normalization(args):
    from um_plugin.openood.registry.datasets import DEFAULT_NORMALIZATION, normalization_by_name
    return (DEFAULT_NORMALIZATION if args.normalization == "default"
            else normalization_by_name(args.normalization))


def _ood_sets(text, name, flag):
    sets = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, _, imglist = part.partition("=")
        if not key or key in sets:
            raise ValueError(f"--{flag} {text!r}: empty or repeated set name {key!r}")
        sets[key] = imglist or f"benchmark_imglist/{name}/test_{key}.txt"
    if not sets:
        raise ValueError(f"--benchmark-out needs --{flag} SET[=IMGLIST],...")
    return sets


def benchmark_kwargs(args) -> dict:
    """register_benchmark's arguments for this benchmark; every list checked."""
    lists = _lists(args)
    kwargs = dict(name=args.name, data_root=args.data_root, num_classes=args.num_classes,
                  id_train=lists["train"], id_val=lists["val"], id_test=lists["test"],
                  ood_val=args.ood_val or f"benchmark_imglist/{args.name}/val_ood.txt",
                  near_ood=_ood_sets(args.near, args.name, "near"),
                  far_ood=_ood_sets(args.far, args.name, "far"), data_dir=args.data_dir,
                  image_size=args.image_size, pre_size=args.pre_size,
                  normalization=_normalization(args))
    named = [(key, kwargs[key]) for key in ("id_train", "id_val", "id_test", "ood_val")]
    named += [(f"{group}[{set_name!r}]", imglist) for group in ("near_ood", "far_ood")
              for set_name, imglist in kwargs[group].items()]
    for what, imglist in named:
        if not os.path.isfile(os.path.join(args.data_root, imglist)):
            raise ValueError(f"--benchmark-out: {what} image list {imglist!r} does not exist "
                             f"under --data-root {args.data_root!r}")
    return kwargs


def check(args) -> None:
    if not os.path.isdir(os.path.join(args.data_root, "benchmark_imglist")):
        raise ValueError(f"--data-root {args.data_root!r} has no benchmark_imglist/ folder")
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a folder; pass the YAML file to write")
    if args.benchmark_out is not None:
        if os.path.isdir(args.benchmark_out):
            raise ValueError(f"--benchmark-out {args.benchmark_out!r} is a folder; pass a YAML "
                             "file")
        benchmark_kwargs(args)


def run(args) -> int:
    from um_plugin.openood.registry.dataset_file import write_benchmark_file
    from um_plugin.openood.registry.datasets import dataset_config, save_yaml
    from .common import CommandError
    lists = _lists(args)
    try:
        config = dataset_config(args.name, args.data_root, num_classes=args.num_classes,
                                id_train=lists["train"], id_val=lists["val"],
                                id_test=lists["test"], data_dir=args.data_dir,
                                image_size=args.image_size, pre_size=args.pre_size,
                                normalization=_normalization(args), batch_size=args.batch_size,
                                oe=args.oe)
        print(save_yaml(config, args.out, f"benchmark {args.name!r} under "
                                          f"{os.path.abspath(args.data_root)}"))
        if args.benchmark_out is not None:
            print(write_benchmark_file(benchmark_kwargs(args), args.benchmark_out))
    except (ValueError, OSError) as exc:
        raise CommandError(str(exc)) from None
    return 0
