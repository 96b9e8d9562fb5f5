"""Reproduce the paper's ImageNet-1K headline (ResNet-50, UMAP + ODIN) through OpenOOD (GPU).

    python benchmarks/repro_imagenet.py --data-root ./data --checkpoint resnet50-0676ba61.pth
    python benchmarks/repro_imagenet.py --dry-run
"""
import sys

from um_plugin.bench.repro import main

if __name__ == "__main__":
    sys.exit(main(["imagenet"] + sys.argv[1:]))
