"""OpenOOD postprocessors ``um`` / ``umap`` (and ``um_<base>`` / ``umap_<base>``).

``setup`` checks that the network fits the ID training images it will train on, estimates ξ on
them and runs the core's UM or UMAP on the network *in place* (the Evaluator keeps its own
reference to it) over a seeded, shuffled loader of those images (OpenOOD builds its loader
unshuffled); ``preprocessing: train`` (the authors) reads them through OpenOOD's train-time
augmentation, ``test`` as the Evaluator does. Then it hands setup, scoring and the APS
hyper-parameter search to a base postprocessor (``base: ebo`` by default). A network another
method already fine-tuned is refused (see ``reuse.py``). Where the YAMLs come from is
:mod:`.config_discovery`'s job, the base method :mod:`.base_method`'s, and OpenOOD's lookups
of our names :mod:`.lookups`'.
"""
from __future__ import annotations

from openood.postprocessors.base_postprocessor import BasePostprocessor
from openood.preprocessors.utils import get_preprocessor
from openood.utils.config import Config

from um_plugin.core.runs import RUNNERS

from um_plugin.openood.postprocessing.base_method import base_net, build_base
from um_plugin.openood.cpu import require_device
from um_plugin.openood.settings.fit_check import prepare_xi
from um_plugin.openood.settings.loaders import evaluator_train_preprocessor, like, retransformed, shuffled_loader
from um_plugin.openood.registry.names import split_name
from um_plugin.openood.settings.options import postprocessor_options
from um_plugin.openood.settings.presets import log_differences
from um_plugin.openood.settings.reuse import Mark, claim, mark_of, new_token, refuse_reuse
from um_plugin.openood.training.sync import unwrap

_WHERE = "postprocessor.postprocessor_args"


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
        return base_net(self.base_name, net, self._wrapped)

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
        in_order = like(train, dataset, what, shuffle=False, batch_size=batch_size)
        log_differences(self.options, f"postprocessor {self.name!r}", batch_size=batch_size)
        self.xi = prepare_xi(model, in_order, self.options.xi, data, where=_WHERE,
                             reference=id_loader_dict.get("val"),
                             syntax=getattr(self, "setting_syntax", None))
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
        require_device(f"postprocessor {self.name!r}")  # before fine-tuning, not after
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
