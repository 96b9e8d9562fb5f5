"""Reproduce the paper on CIFAR-10 / CIFAR-100 through OpenOOD (GPU; OpenOOD's data + ResNet-18).

    python benchmarks/repro_cifar.py cifar10 --data-root ./data \\
        --checkpoint ./results/cifar10_resnet18_32x32_base_e100_lr0.1_default/s0/best.ckpt
    python benchmarks/repro_cifar.py cifar10 --dry-run      # plumbing check, CPU, seconds
"""
import sys

from um_plugin.bench.repro import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] not in ("cifar10", "cifar100", "-h", "--help"):
        print("usage: repro_cifar.py {cifar10,cifar100} [options]; see --help", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(args))
