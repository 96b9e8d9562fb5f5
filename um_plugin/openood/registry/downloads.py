"""No silent download: OpenOOD's ``Evaluator`` fetches absent data; with the plug-in it asks first.

The Evaluator's first step, ``data_setup(data_root, id_name)``
(``openood/evaluation_api/datasets.py``), downloads from Google Drive
``<data_root>/benchmark_imglist`` when it is absent and every dataset of
``benchmarks_dict[id_name]`` whose folder (``<data_root>/<dir_dict key>/<dataset>``) is missing
or empty: several GB for CIFAR-10, unasked. :func:`register` wraps it so a run that would fetch
stops first, in one line naming every folder to fill, unless the user opts in with
``UM_PLUGIN_ALLOW_DOWNLOAD=1``. Benchmarks from ``register_benchmark`` list no datasets, so
they never download.
"""
from __future__ import annotations

import functools
import os
from typing import List

ALLOW_DOWNLOAD_ENV = "UM_PLUGIN_ALLOW_DOWNLOAD"


def download_allowed() -> bool:
    """Whether the user asked OpenOOD to download absent data (``UM_PLUGIN_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"


def folders_to_download(data_root: str, id_name: str) -> List[str]:
    """The folders OpenOOD's ``data_setup`` would download into for ``id_name``, by its rules."""
    from openood.evaluation_api import datasets as oo_datasets
    folders = []
    imglists = os.path.join(data_root, "benchmark_imglist")
    if not os.path.exists(imglists):
        folders.append(imglists)
    for dataset in oo_datasets.benchmarks_dict.get(id_name, []):
        for kind, names in oo_datasets.dir_dict.items():
            folder = os.path.join(data_root, kind, dataset)
            if dataset in names and not (os.path.isdir(folder) and os.listdir(folder)):
                folders.append(folder)
                break
    return folders


def make_data_setup(data_setup):
    """OpenOOD's ``data_setup``, refusing (FileNotFoundError) to download unless allowed."""

    @functools.wraps(data_setup)
    def refusing_data_setup(data_root, id_data_name):
        missing = folders_to_download(data_root, id_data_name)
        if missing and not download_allowed():
            raise FileNotFoundError(
                f"OpenOOD's Evaluator would download {id_data_name!r} data from Google Drive "
                f"into {', '.join(missing)} (missing or empty); um_plugin downloads nothing "
                f"unasked: put the data there (data_root={data_root!r}), or set "
                f"{ALLOW_DOWNLOAD_ENV}=1 to let OpenOOD fetch it")
        return data_setup(data_root, id_data_name)
    return refusing_data_setup
