"""Compute-cost ratios of UM / UMAP vs plain fine-tuning (LeNet and OpenOOD's ResNet-18).

    python benchmarks/cost.py --models lenet,resnet18 --batch 256 --out cost/
"""
import sys

from um_plugin.bench.cost import main

if __name__ == "__main__":
    sys.exit(main())
