"""OpenOOD postprocessors ``um`` / ``umap`` (and ``um_<base>`` / ``umap_<base>``).

``setup`` checks that the network fits the ID training images it will train on, estimates ξ on
them and runs the core's UM or UMAP on the network *in place* (the Evaluator keeps its own
reference to it) over a seeded, shuffled loader of those images (OpenOOD builds its loader
unshuffled); ``preprocessing: train`` (the authors) reads them through OpenOOD's train-time
augmentation, ``test`` as the Evaluator does. Then it hands setup, scoring and the APS
hyper-parameter search to a base postprocessor (``base: ebo`` by default). A network another
method already fine-tuned is refused (see ``reuse.py``). Our YAMLs come from
``<config_root>/postprocessors/<name>.yml`` when present, else from this package; the base's
YAML is looked up in the places :func:`base_config_candidates` lists, never downloaded.
"""
from __future__ import annotations

import importlib
import os
from importlib import resources

import openood
from openood.evaluation_api import postprocessor as eval_pp
from openood.postprocessors import utils as pp_utils
from openood.postprocessors.base_postprocessor import BasePostprocessor
from openood.preprocessors.utils import get_preprocessor
from openood.utils.config import Config, merge_configs
from torch.utils.data import DataLoader

from um_plugin.core import MODES
from um_plugin.core.runs import RUNNERS

from .layout import is_method_name, known_postprocessor_names, original
from .fit_check import prepare_xi
from .loaders import evaluator_train_preprocessor, retransformed, shuffled_loader
from .options import postprocessor_options
from .presets import log_differences
from .reuse import Mark, claim, mark_of, new_token, refuse_reuse
from .sync import unwrap

CONFIG_ROOT_ENV = "OPENOOD_CONFIG_ROOT"
CHECKOUT_ENV = "UM_PLUGIN_OPENOOD_ROOT"
# Evaluator wraps the net for these names only when they are the postprocessor_name itself.
_NET_WRAPPERS = {
    "react": ("openood.networks.react_net", "ReactNet"),
    "ash": ("openood.networks.ash_net", "ASHNet"),
    "scale": ("openood.networks.scale_net", "ScaleNet"),
    "adascale_a": ("openood.networks.adascale_net", "AdaScaleANet"),
    "adascale_l": ("openood.networks.adascale_net", "AdaScaleLNet"),
}
_WHERE = "postprocessor.postprocessor_args"


def split_name(name: str):
    """``'umap_odin'`` -> ``('umap', 'odin')``; ``'um'`` -> ``('um', None)``."""
    if name in MODES:
        return name, None
    for mode in sorted(MODES, key=len, reverse=True):  # 'umap_' before 'um_'
        if name.startswith(mode + "_") and len(name) > len(mode) + 1:
            return mode, name[len(mode) + 1:]
    raise ValueError(f"{name!r} is not a UM postprocessor name; use one of {MODES} or "
                     f"'<mode>_<base>' (e.g. 'umap_ebo')")


def packaged_config(name: str) -> str:
    """Path of a YAML shipped in ``um_plugin/openood/configs``."""
    return str(resources.files("um_plugin.openood").joinpath("configs", *name.split("/")))


def config_roots(config_root=None) -> list:
    """The ``configs/`` folders searched for a base postprocessor's YAML, in this order:
    ``config_root`` (the Evaluator's argument, or the pipeline config's), ``$OPENOOD_CONFIG_ROOT``,
    ``$UM_PLUGIN_OPENOOD_ROOT/configs`` (an OpenOOD checkout), ``./configs`` (main.py runs from
    the checkout), and the ``configs/`` beside an editable OpenOOD install."""
    checkout = os.environ.get(CHECKOUT_ENV)
    installed = os.path.dirname(os.path.dirname(os.path.abspath(openood.__file__)))
    roots = [os.fspath(config_root) if config_root else None,
             os.environ.get(CONFIG_ROOT_ENV) or None,
             os.path.join(checkout, "configs") if checkout else None,
             os.path.join(os.getcwd(), "configs"),
             os.path.join(installed, "configs")]
    out = []
    for root in roots:
        if root and os.path.abspath(root) not in out:
            out.append(os.path.abspath(root))
    return out


def base_config_candidates(base: str, config_root=None) -> list:
    """Where the base postprocessor's YAML is looked for, in order (never downloaded)."""
    return [os.path.join(root, "postprocessors", f"{base}.yml") for root in config_roots(config_root)]


def _base_class(base: str):
    cls = eval_pp.postprocessors.get(base)
    if cls is not None and not is_method_name(base):
        return cls
    return None


def build_base(base: str, config: Config, config_root=None):
    """The base postprocessor, configured from its own YAML merged over ``config``."""
    if not isinstance(base, str) or is_method_name(base):
        raise ValueError(f"base postprocessor must be an OpenOOD method name, got {base!r}; "
                         f"known: {known_postprocessor_names()}")
    known = known_postprocessor_names()
    if base not in known:
        raise ValueError(f"unknown base postprocessor {base!r}; OpenOOD knows {known}")
    candidates = base_config_candidates(base, config_root)
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        raise FileNotFoundError(
            f"no config for base postprocessor {base!r} (postprocessors/{base}.yml); looked in "
            f"{candidates}. Point one of these at OpenOOD's configs/ folder: the Evaluator's "
            f"config_root, ${CONFIG_ROOT_ENV}, or ${CHECKOUT_ENV} (an OpenOOD checkout)")
    base_config = Config(config)
    if "postprocessor" in base_config:
        del base_config["postprocessor"]
    base_config = merge_configs(base_config, Config(path))
    cls = _base_class(base)
    if cls is not None:
        instance = cls(base_config)
    else:  # only in openood.postprocessors.utils' registry
        instance = original(pp_utils.get_postprocessor)(base_config)
    instance.APS_mode = bool(base_config.postprocessor.APS_mode)
    instance.hyperparam_search_done = False
    return instance


class UnleashingPostprocessor(BasePostprocessor):
    """Run UM / UMAP on the network in ``setup``, then score with a base postprocessor."""

    mode = None
    _DELEGATED = ("args_dict", "setup_flag")

    def __init__(self, config: Config):
        super().__init__(config)
        section = config.postprocessor
        name = section.name
        if name not in (None, self.mode):
            mode, base = split_name(name)
            if mode != self.mode:
                raise ValueError(f"postprocessor name {name!r} is not a {self.mode!r} method")
        else:
            base = None
        self.base_name = base or section.get("base") or "ebo"
        self.options = postprocessor_options(section.postprocessor_args, self.mode)
        self.base = build_base(self.base_name, config, section.get("config_root"))
        aps = section.get("APS_mode")
        self.APS_mode = self.base.APS_mode if aps is None else bool(aps)
        self.hyperparam_search_done = False
        self.xi = None
        self.token = new_token()
        self._wrapped = {}

    @property
    def name(self) -> str:
        return f"{self.mode}_{self.base_name}"

    # --- the network -----------------------------------------------------------------------
    def _base_net(self, net):
        """The net the base expects (ReactNet etc. for react/ash/scale), cached per net."""
        spec = _NET_WRAPPERS.get(self.base_name)
        if spec is None or type(net).__name__ == spec[1]:
            return net
        key = id(net)
        if key not in self._wrapped or self._wrapped[key].backbone is not net:
            self._wrapped[key] = getattr(importlib.import_module(spec[0]), spec[1])(net)
        return self._wrapped[key]

    def unleash(self, net, id_loader_dict) -> None:
        """Estimate ξ and run UM / UMAP on ``net`` in place, once per network: a network this
        instance already fine-tuned is left alone, one fine-tuned by anything else refused."""
        model = unwrap(net)
        mark = mark_of(model)
        if mark is not None and mark.token == self.token:
            return
        refuse_reuse(model, f"postprocessor {self.name!r}")
        train = id_loader_dict["train"]
        finetune, data = self.options.finetune, self.options.data
        what = "postprocessor: id_loader_dict['train']"
        dataset = train.dataset
        if data.preprocessing == "train":
            dataset = retransformed(train, self._train_preprocessor(),
                                    f"{_WHERE}.preprocessing: train")
        batch_size = data.batch_size or train.batch_size
        loader = shuffled_loader(train, finetune.seed, what, dataset=dataset, batch_size=batch_size)
        in_order = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                              num_workers=train.num_workers, collate_fn=train.collate_fn)
        log_differences(self.options, f"postprocessor {self.name!r}", batch_size=batch_size)
        self.xi = prepare_xi(model, in_order, self.options.xi, data, where=_WHERE,
                             reference=id_loader_dict.get("val"))
        RUNNERS[self.mode](model, loader, self.xi, finetune)
        net.eval()
        claim(model, Mark(self.mode, f"postprocessor {self.name!r}", self.token))

    def _train_preprocessor(self):
        """OpenOOD's train-time preprocessor: the pipeline's own when a test_ood pipeline runs
        us (its config has the dataset's sizes), else the Evaluator's ID set's."""
        dataset = self.config.get("dataset") or {}
        if "image_size" in dataset and self.config.get("preprocessor") is not None:
            return get_preprocessor(self.config, "train")
        return evaluator_train_preprocessor(dataset.get("name"))

    # --- OpenOOD's postprocessor contract --------------------------------------------------
    def setup(self, net, id_loader_dict, ood_loader_dict):
        if "train" not in id_loader_dict:
            raise KeyError(f"{self.mode} needs id_loader_dict['train'] (ID training data) to "
                           f"estimate xi and fine-tune; got splits {sorted(id_loader_dict)}")
        self.unleash(net, id_loader_dict)
        self.base.setup(self._base_net(net), id_loader_dict, ood_loader_dict)

    def postprocess(self, net, data):
        return self.base.postprocess(self._base_net(net), data)

    def inference(self, net, data_loader, progress: bool = True):
        return self.base.inference(self._base_net(net), data_loader, progress)

    def set_hyperparam(self, hyperparam):
        self.base.set_hyperparam(hyperparam)

    def get_hyperparam(self):
        return self.base.get_hyperparam()

    def __getattr__(self, name):
        # Only called for missing attributes: expose the base's search space / setup flag.
        if name in UnleashingPostprocessor._DELEGATED and "base" in self.__dict__:
            return getattr(self.__dict__["base"], name)
        raise AttributeError(name)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_wrapped"] = {}  # holds the network; eval_ood.py pickles postprocessors
        return state


class UMPostprocessor(UnleashingPostprocessor):
    """UM fine-tuning of all weights, then the base score."""

    mode = "um"


class UMAPPostprocessor(UnleashingPostprocessor):
    """UMAP mask learning (weights frozen), then the base score."""

    mode = "umap"


POSTPROCESSORS = {cls.mode: cls for cls in (UMPostprocessor, UMAPPostprocessor)}


def load_method_config(name: str, config_root=None) -> Config:
    """Our YAML for ``name`` (``<config_root>`` copy first, else the packaged one), base filled in."""
    mode, base = split_name(name)
    path = None
    if config_root:
        for candidate in (name, mode):
            p = os.path.join(config_root, "postprocessors", f"{candidate}.yml")
            if os.path.isfile(p):
                path = p
                break
    config = Config(path or packaged_config(f"postprocessors/{mode}.yml"))
    config.postprocessor.name = mode
    if base is not None:
        config.postprocessor.base = base
    config.postprocessor.config_root = os.fspath(config_root) if config_root else None
    return config


def make_evaluator_get_postprocessor(openood_get_postprocessor):
    """Wrap ``openood.evaluation_api.postprocessor.get_postprocessor`` for our names."""

    def get_postprocessor(config_root, postprocessor_name, id_data_name):
        if not is_method_name(postprocessor_name):
            return openood_get_postprocessor(config_root, postprocessor_name, id_data_name)
        config = load_method_config(postprocessor_name, config_root)
        config = merge_configs(config, Config(**{"dataset": {"name": id_data_name}}))
        mode = config.postprocessor.name
        return POSTPROCESSORS[mode](config)

    return get_postprocessor


def make_pipeline_get_postprocessor(openood_get_postprocessor):
    """Wrap ``openood.postprocessors.utils.get_postprocessor`` (test_ood pipelines) for our names."""

    def get_postprocessor(config):
        name = config.postprocessor.name if config.postprocessor is not None else None
        if not is_method_name(name):
            return openood_get_postprocessor(config)
        mode, base = split_name(name)
        if base is not None:
            config.postprocessor.base = base
        config.postprocessor.name = mode
        postprocessor = POSTPROCESSORS[mode](config)
        return postprocessor

    return get_postprocessor
