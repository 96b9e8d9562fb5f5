"""OpenOOD postprocessors ``um`` / ``umap`` (and ``um_<base>`` / ``umap_<base>``).

``setup`` checks that the network fits the ID training images it will train on, estimates ξ on
them and runs the core's UM or UMAP on the network *in place* (the Evaluator keeps its own
reference to it) over a seeded, shuffled loader of those images (OpenOOD builds its loader
unshuffled); ``preprocessing: train`` (the authors) reads them through OpenOOD's train-time
augmentation, ``test`` as the Evaluator does. Then it hands setup, scoring and the APS
hyper-parameter search to a base postprocessor (``base: ebo`` by default). With a
``postprocessor_sweep`` of UM's own settings (:mod:`.sweep`) and ``APS_mode``, OpenOOD's search
chooses them too: ``setup`` only gets the network ready and ``set_hyperparam`` puts it into
each setting's fine-tuned state (:mod:`.search`). A network another
method already fine-tuned is refused (see ``reuse.py``). Where the YAMLs come from is
:mod:`.config_discovery`'s job, the base method :mod:`.base_method`'s, and OpenOOD's lookups
of our names :mod:`.lookups`'.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from openood.postprocessors.base_postprocessor import BasePostprocessor
from openood.preprocessors.utils import get_preprocessor
from openood.utils.config import Config

from um_plugin.core.runs import RUNNERS

from um_plugin.openood.postprocessing.base_method import base_net, build_base
from um_plugin.openood.cpu import require_device
from um_plugin.openood.settings.fit_check import log, prepare_xi
from um_plugin.openood.settings.loaders import evaluator_train_preprocessor, like, retransformed, shuffled_loader
from um_plugin.openood.registry.names import split_name
from um_plugin.openood.settings.options import MethodOptions, XiOptions, postprocessor_options
from um_plugin.openood.settings.presets import log_differences
from um_plugin.openood.settings.reuse import Mark, claim, mark_of, new_token, refuse_reuse
from um_plugin.openood.postprocessing.search import Search, short
from um_plugin.openood.postprocessing.sweep import read_sweep
from um_plugin.openood.training.sync import unwrap

_WHERE = "postprocessor.postprocessor_args"


@dataclass(frozen=True)
class _TrainingData:
    """The ID training images a route reads: ``train`` (OpenOOD's loader), the dataset with
    the chosen preprocessing, its batch size, the in-order loader of ξ and the ID validation
    loader of the fit check."""

    train: object
    dataset: object
    what: str
    batch_size: int
    in_order: object
    reference: object


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
        base_sweep = getattr(self.base, "args_dict", None) if self.base.APS_mode else None
        self.sweep = read_sweep(section.get("postprocessor_sweep"), self.mode, base_sweep)
        searched = self.base.APS_mode or self.sweep is not None
        self.APS_mode = searched if aps is None else bool(aps)
        if self.sweep is not None and self.APS_mode:
            self.args_dict = self.sweep.args_dict  # what OpenOOD's hyperparam_search iterates
        self.sweep_dir = section.get("sweep_dir")
        self.hyperparam_search_done = False
        self.xi = None
        self.token = new_token()
        self.search = None    # the Search while OpenOOD's parameter search runs on a network
        self.chosen = None    # the combination the search chose (kept when pickled)
        self.search_table = []  # and the search's table (Search.table_rows)
        self._wrapped = {}

    @property
    def name(self) -> str:
        return f"{self.mode}_{self.base_name}"

    # --- the network -----------------------------------------------------------------------
    def _base_net(self, net):
        """The net the base expects (ReactNet etc. for react/ash/scale), cached per net."""
        return base_net(self.base_name, net, self._wrapped)

    def unleash(self, net, id_loader_dict, options: Optional[MethodOptions] = None) -> None:
        """Estimate ξ and run UM / UMAP on ``net`` in place, once per network: a network this
        instance already fine-tuned is left alone, one fine-tuned by anything else refused."""
        model = unwrap(net)
        if self._owns(model):
            return
        refuse_reuse(model, f"postprocessor {self.name!r}")
        data = self._training_data(id_loader_dict)
        options = options or self.options
        self.xi = self._finetune(model, data, options, None)
        net.eval()
        claim(model, Mark(self.mode, f"postprocessor {self.name!r}", self.token))

    def _owns(self, model) -> bool:
        mark = mark_of(model)
        return mark is not None and mark.token == self.token

    def _training_data(self, id_loader_dict) -> "_TrainingData":
        """The loaders ξ and fine-tuning read (``preprocessing``, ``batch_size``)."""
        train = id_loader_dict["train"]
        data = self.options.data
        what = "postprocessor: id_loader_dict['train']"
        dataset = train.dataset
        if data.preprocessing == "train":
            dataset = retransformed(train, self._train_preprocessor(),
                                    f"{_WHERE}.preprocessing: train")
        batch_size = data.batch_size or train.batch_size
        return _TrainingData(train, dataset, what, batch_size,
                             like(train, dataset, what, shuffle=False, batch_size=batch_size),
                             id_loader_dict.get("val"))

    def _finetune(self, model, data: "_TrainingData", options: MethodOptions, xi) -> float:
        """One fine-tuning of ``model`` in place, by the core's runner; ξ prepared unless given."""
        loader = shuffled_loader(data.train, options.finetune.seed, data.what,
                                 dataset=data.dataset, batch_size=data.batch_size)
        log_differences(options, f"postprocessor {self.name!r}", batch_size=data.batch_size)
        if xi is None:
            xi = self._prepare_xi(model, data, options.xi)
        RUNNERS[self.mode](model, loader, xi, options.finetune)
        return xi

    def _prepare_xi(self, model, data: "_TrainingData", xi: XiOptions) -> float:
        return prepare_xi(model, data.in_order, xi, self.options.data, where=_WHERE,
                          reference=data.reference,
                          syntax=getattr(self, "setting_syntax", None))

    # --- OpenOOD's parameter search over UM's own settings -------------------------------
    def _searching(self) -> bool:
        return self.sweep is not None and self.APS_mode and not self.hyperparam_search_done

    def _start_search(self, net, id_loader_dict, ood_loader_dict) -> None:
        """Get ``net`` ready for the search: nothing is fine-tuned until ``set_hyperparam``."""
        model = unwrap(net)
        if self.search is not None and self.search.model is model:
            return
        if not self._owns(model):
            refuse_reuse(model, f"postprocessor {self.name!r}")
        data = self._training_data(id_loader_dict)

        def finetune(options, xi):
            self._finetune(model, data, options, xi)

        def setup_base():
            net.eval()
            if hasattr(self.base, "setup_flag"):
                self.base.setup_flag = False  # the network changed: the base sets up again
            self.base.setup(self._base_net(net), id_loader_dict, ood_loader_dict)

        self.search = Search(self.sweep, model, self.options, name=self.name,
                             prepare_xi=lambda xi: self._prepare_xi(model, data, xi),
                             finetune=finetune, setup_base=setup_base,
                             id_val=id_loader_dict.get("val"), ood_val=ood_loader_dict.get("val"),
                             folder=self.sweep_dir, table_folder=self.config.get("output_dir"))
        self.search.announce()
        claim(model, Mark(self.mode, f"postprocessor {self.name!r}", self.token))

    def chosen_values(self) -> dict:
        """The values OpenOOD's search chose (``{'loss_constraint': '2x', 'xi': 0.41, ...}``),
        or ``{}`` without a sweep of UM's settings; the leaderboard row names them."""
        if self.sweep is None or self.chosen is None:
            return {}
        out = {short(k): v for k, v in zip(self.sweep.args_dict, self.chosen)}
        out["xi"] = self.xi
        return out

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
        if self._searching():
            self._start_search(net, id_loader_dict, ood_loader_dict)
            return
        options = None
        if self.sweep is not None and not self.APS_mode and not self._owns(unwrap(net)):
            log(f"[um-plugin] postprocessor {self.name!r}: APS_mode is false, so "
                f"postprocessor_sweep's {list(self.sweep.um_keys)} are not searched; "
                f"{_WHERE} is used")
        if self.sweep is not None and self.chosen is not None:  # a search done elsewhere
            options = self.sweep.setting(self.chosen[len(self.sweep.base_keys):]).options(
                self.options)
        self.unleash(net, id_loader_dict, options)
        self.base.setup(self._base_net(net), id_loader_dict, ood_loader_dict)

    def postprocess(self, net, data):
        return self.base.postprocess(self._base_net(net), data)

    def inference(self, net, data_loader, progress: bool = True):
        search = self.search if self.sweep is not None and self.APS_mode else None
        if search is not None and search.current is None:
            raise RuntimeError(
                f"postprocessor {self.name!r}: postprocessor_sweep lists UM settings, so the "
                "network is fine-tuned by OpenOOD's parameter search, which has not run; set "
                "postprocessor.APS_mode: true in the config (OpenOOD's main.py reads it there)")
        if search is not None and search.failed_now:
            scores = search.failed_scores(data_loader)
        else:
            scores = self.base.inference(self._base_net(net), data_loader, progress)
        if search is not None:
            search.observe(data_loader, scores)
        return scores

    def set_hyperparam(self, hyperparam):
        if self.sweep is None or not self.APS_mode:
            return self.base.set_hyperparam(hyperparam)
        if self.search is None:
            raise RuntimeError(f"postprocessor {self.name!r}: set_hyperparam before setup; "
                               "OpenOOD's search calls setup first")
        hyperparam = list(hyperparam)
        base_part = hyperparam[:len(self.sweep.base_keys)]
        if base_part:
            self.base.set_hyperparam(base_part)
        self.search.select(hyperparam)
        self.xi = self.search.outcomes[self.search.current].xi
        if self.search.done:
            self.chosen, self.search_table = self.search.chosen, self.search.table_rows()

    def get_hyperparam(self):
        if self.sweep is None or not self.APS_mode:
            return self.base.get_hyperparam()
        search = self.search
        if search is not None and search.combination is not None:
            return list(search.combination)
        return list(self.chosen) if self.chosen is not None else None

    def __getattr__(self, name):
        # Only called for missing attributes: expose the base's search space / setup flag.
        if name in UnleashingPostprocessor._DELEGATED and "base" in self.__dict__:
            return getattr(self.__dict__["base"], name)
        raise AttributeError(name)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_wrapped"] = {}  # holds the network; eval_ood.py pickles postprocessors
        state["search"] = None  # the network and its fine-tuned states
        return state


class UMPostprocessor(UnleashingPostprocessor):
    """UM fine-tuning of all weights, then the base score."""

    mode = "um"


class UMAPPostprocessor(UnleashingPostprocessor):
    """UMAP mask learning (weights frozen), then the base score."""

    mode = "umap"


POSTPROCESSORS = {cls.mode: cls for cls in (UMPostprocessor, UMAPPostprocessor)}
