#!/usr/bin/env bash
# Sets up um-plugin with everything its tests, its benchmarks and both OpenOOD routes need, in
# the Python environment of $PYTHON (default: the `python` on PATH -- use a virtualenv):
#
#   bash install.sh                    # OpenOOD v1.5 from its git repository, pinned commit
#   bash install.sh --openood SRC      # ... from a local checkout or a .tar.gz snapshot of it
#
# 1. torch + torchvision, unless both import: the CPU build where `nvidia-smi` sees no GPU
#    (plain `pip install torch` brings a CUDA build of several GB); --gpu / --cpu force one.
# 2. the plug-in, editable, with its extras: [test] pytest, [openood] every package OpenOOD
#    imports at run time (its own setup.py asks for faiss-gpu and opencv-python 5, which do
#    not install beside numpy<2, so the pins live in our setup.cfg), [bench] the benchmarks'.
# 3. libmr (OpenOOD's OpenMax): no wheel exists and its setup.py needs numpy and Cython while
#    it builds, so it is built in a throwaway venv against this environment's numpy.
# 4. OpenOOD itself, editable from --dir (default: OpenOOD/ beside this script), --no-deps;
#    the tests find main.py, scripts/ and configs/ there. An existing checkout is reused.
# Ends by importing um_plugin.openood, which names anything still missing.
set -euo pipefail

OPENOOD_GIT=https://github.com/Jingkang50/OpenOOD
OPENOOD_COMMIT=3c35632ee91b54b09d1f085d04f94744cece7d0b   # 2025-12-01, the v1.5 tested here
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
src="" dir="$here/OpenOOD" torch_build=auto

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --openood SRC, --dir DIR, --cpu, --gpu"; }
die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --openood) [ $# -ge 2 ] || die "--openood needs a path or git URL"; src="$2"; shift 2 ;;
    --dir) [ $# -ge 2 ] || die "--dir needs a folder"; dir="$2"; shift 2 ;;
    --cpu) torch_build=cpu; shift ;;
    --gpu) torch_build=gpu; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (valid: --openood SRC, --dir DIR, --cpu, --gpu, --help)" ;;
  esac
done
command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH; set PYTHON=/path/to/python"
pip() { "$PYTHON" -m pip "$@"; }
step() { echo "install.sh: $*"; }

# 1. torch
if "$PYTHON" -c 'import torch, torchvision' 2>/dev/null; then
  step "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') already installed: kept"
else
  if [ "$torch_build" = auto ]; then
    if nvidia-smi -L >/dev/null 2>&1; then torch_build=gpu; else torch_build=cpu; fi
  fi
  step "installing torch and torchvision ($torch_build build)"
  cpu_index=https://download.pytorch.org/whl/cpu
  if [ "$torch_build" = cpu ] && ! "$PYTHON" -c "import urllib.request as u; u.urlopen('$cpu_index/torch/', timeout=10)" 2>/dev/null; then
    step "the PyTorch CPU index ($cpu_index) cannot be reached: torch from the default index (it may be a CUDA build)"
    pip install -q torch torchvision
  elif [ "$torch_build" = cpu ]; then
    # an extra index, not --index-url: the default index still serves what torch needs,
    # and for one version the CPU index's "+cpu" builds rank above the default's
    pip install -q torch torchvision --extra-index-url "$cpu_index"
  else
    pip install -q torch torchvision
  fi
  "$PYTHON" -c 'import torch, torchvision' || die "torch and torchvision were installed but do not import together (above)"
fi

# 2. the plug-in and OpenOOD's runtime packages
step "installing um-plugin[test,openood,bench] from $here"
pip install -q -e "$here[test,openood,bench]"

# 3. libmr
if ! "$PYTHON" -c 'import libmr' 2>/dev/null; then
  step "building libmr against numpy $("$PYTHON" -c 'import numpy; print(numpy.__version__)')"
  build="$(mktemp -d)"; trap 'rm -rf "$build"' EXIT
  "$PYTHON" -m venv "$build/venv"
  "$build/venv/bin/python" -m pip install -q \
    "numpy==$("$PYTHON" -c 'import numpy; print(numpy.__version__)')" cython wheel "setuptools<70"
  "$build/venv/bin/python" -m pip wheel -q --no-build-isolation --no-deps libmr -w "$build/wheels"
  pip install -q --no-deps "$build"/wheels/libmr-*.whl
fi

# 4. OpenOOD
if [ -f "$dir/main.py" ] && [ -d "$dir/openood" ]; then
  [ -z "$src" ] || die "$dir already holds an OpenOOD checkout; remove it to install from $src, or pass --dir"
  step "using the OpenOOD checkout at $dir"
elif [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  die "$dir exists and is not an OpenOOD checkout (no main.py and openood/); remove it or pass --dir"
else
  if [ -n "$src" ] && [[ "$src" != *://* && "$src" != git@* ]] && [ ! -f "$src" ] && [ ! -d "$src" ]; then
    die "--openood $src: not a git URL, a .tar.gz file or a folder"
  fi
  mkdir -p "$dir"
  if [ -z "$src" ] || [[ "$src" == *://* || "$src" == git@* ]]; then
    if [ -z "$src" ]; then
      step "fetching OpenOOD $OPENOOD_COMMIT from $OPENOOD_GIT"
      git -C "$dir" init -q && git -C "$dir" fetch -q --depth 1 "$OPENOOD_GIT" "$OPENOOD_COMMIT" \
        && git -C "$dir" checkout -q FETCH_HEAD
    else
      step "cloning OpenOOD from $src"
      git clone -q --depth 1 "$src" "$dir"
    fi
  elif [ -f "$src" ]; then
    step "unpacking OpenOOD from $src"
    tar -xzf "$src" -C "$dir" --strip-components 1
  else
    step "copying OpenOOD from $src"
    cp -a "$src/." "$dir/"
  fi
  [ -f "$dir/main.py" ] && [ -d "$dir/openood" ] || die "$src did not give an OpenOOD checkout (no main.py and openood/ in $dir)"
fi
step "installing OpenOOD from $dir (editable, --no-deps: [openood] brought its packages)"
pip install -q --no-deps -e "$dir"

"$PYTHON" -c 'import um_plugin.openood' || die "um_plugin.openood does not import (above: what is missing)"
step "done: OpenOOD at $dir; run the tests with: python -m pytest"
