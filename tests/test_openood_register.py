"""Registration reaches every OpenOOD lookup site, is idempotent, and never shadows OpenOOD."""
import pytest

from openood_fixtures import REPO, run_python


@pytest.mark.slow
def test_import_um_plugin_never_imports_openood():
    proc = run_python("""
        import sys, um_plugin, um_plugin.core, um_plugin.cli
        assert not any(m == 'openood' or m.startswith('openood.') for m in sys.modules), 'openood imported'
    """)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_missing_openood_says_how_to_install():
    proc = run_python("""
        import sys
        sys.modules['openood'] = None  # as if not installed
        try:
            import um_plugin.openood
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    assert "OpenOODNotInstalledError" in proc.stdout and "bash install.sh" in proc.stdout, proc.stderr


def test_every_missing_openood_dependency_is_named_at_once():
    """Three missing packages are named in one line with the installer, before OpenOOD's
    own imports fail on the first of them."""
    proc = run_python("""
        import sys
        for name in ('libmr', 'statsmodels', 'timm'):
            sys.modules[name] = None  # as if not installed
        try:
            import um_plugin.openood
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    [line] = proc.stdout.splitlines()
    assert line.startswith("OpenOODNotInstalledError"), proc.stderr
    assert "missing: libmr (no wheel: built against numpy), statsmodels (statsmodels), timm (timm)" in line
    assert "bash install.sh" in line and "openood" not in proc.stderr


@pytest.mark.slow
def test_copies_imported_before_and_after_registration(oo):
    proc = run_python("""
        import openood.pipelines.train_pipeline as before_tr
        import openood.evaluation_api.evaluator as before_ev
        import um_plugin.openood as u
        import openood.pipelines.test_ood_pipeline as after_pp
        import openood.pipelines.finetune_pipeline as after_ft
        wrapped = lambda f: hasattr(f, '__um_plugin_wraps__')
        assert wrapped(before_tr.get_trainer) and wrapped(before_ev.get_postprocessor)
        assert wrapped(after_pp.get_postprocessor) and wrapped(after_ft.get_trainer)
        import openood.evaluation_api.postprocessor as ep
        assert ep.postprocessors['umap'] is u.UMAPPostprocessor
        print('ok')
    """)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_register_twice_is_harmless(oo):
    from openood.evaluation_api import postprocessor as eval_pp
    from openood.trainers import utils as trainer_utils
    first = trainer_utils.get_trainer, eval_pp.get_postprocessor, dict(eval_pp.postprocessors)
    oo.register()
    oo.register()
    assert (trainer_utils.get_trainer, eval_pp.get_postprocessor, dict(eval_pp.postprocessors)) == first
    inner = trainer_utils.get_trainer.__um_plugin_wraps__
    assert not hasattr(inner, "__um_plugin_wraps__")  # wrapped once, not twice
    assert oo.is_registered()


@pytest.mark.slow
def test_register_after_reloading_the_plug_in_replaces_its_stale_entries(oo):
    """After importlib.reload, register() replaces the plug-in's own stale classes instead of
    blaming OpenOOD for them (a process of its own: reloading would leave this one's classes
    stale)."""
    proc = run_python("""
        import importlib, sys
        import um_plugin.openood as u
        import openood.evaluation_api.postprocessor as ep
        import openood.trainers.utils as tu
        launch = importlib.import_module('openood.utils.launch')  # openood.utils.launch: a function
        stale = ep.postprocessors['umap']
        names = sorted(n for n in sys.modules if n.startswith('um_plugin.openood.'))
        for name in names:
            importlib.reload(sys.modules[name])
        importlib.reload(u)
        u.register()
        pp = sys.modules['um_plugin.openood.postprocessing.postprocessors']
        assert ep.postprocessors['umap'] is pp.UMAPPostprocessor is not stale
        assert ep.postprocessors['um'] is pp.UMPostprocessor
        inner = tu.get_trainer.__um_plugin_wraps__
        assert not hasattr(inner, '__um_plugin_wraps__')
        worker = launch._distributed_worker.__um_plugin_wraps__
        assert not hasattr(worker, '__um_plugin_wraps__') and worker.__module__ == 'openood.utils.launch'
        print('ok', len(names))
    """)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_clash_with_openood_name_is_refused(oo, monkeypatch):
    from openood.evaluation_api import postprocessor as eval_pp
    from openood.postprocessors.ebo_postprocessor import EBOPostprocessor
    from openood.trainers import utils as trainer_utils
    monkeypatch.setitem(eval_pp.postprocessors, "umap", EBOPostprocessor)
    with pytest.raises(oo.RegistrationError, match=r"already defines postprocessor 'umap'"):
        oo.register()
    monkeypatch.setitem(eval_pp.postprocessors, "umap", oo.UMAPPostprocessor)

    def get_trainer(net, train_loader, val_loader, config):  # an OpenOOD that ships 'um'
        return {"base": None, "um": None}[config.trainer.name]

    monkeypatch.setattr(trainer_utils, "get_trainer", get_trainer)
    with pytest.raises(oo.RegistrationError, match=r"trainer 'um' \(openood/trainers/utils.py\)"):
        oo.register()


def test_unrecognised_layout_names_the_file(oo, monkeypatch):
    from openood.evaluation_api import postprocessor as eval_pp
    monkeypatch.setattr(eval_pp, "postprocessors", list(eval_pp.postprocessors))
    with pytest.raises(oo.OpenOODLayoutError,
                       match=r"OpenOOD .*openood.evaluation_api.postprocessor.postprocessors to be a "
                             r"dict.*openood/evaluation_api/postprocessor.py"):
        oo.register()


def test_spawned_gpu_workers_register_first(oo):
    """main.py with num_gpus > 1 spawns fresh interpreters; they must register before training."""
    import importlib
    import pickle

    launch = importlib.import_module("openood.utils.launch")  # openood.utils.launch is also a function
    from um_plugin.openood.registry.wrapping import original
    from um_plugin.openood.registry.spawn import registered_worker
    assert launch._distributed_worker is registered_worker
    assert pickle.loads(pickle.dumps(launch._distributed_worker)) is registered_worker  # by reference
    assert original(registered_worker).__module__ == "openood.utils.launch"


def _adapter_imports():
    """{module under um_plugin.openood, dotted (``registry.register``): (adapter modules it
    imports at the top, every import made inside a function)}."""
    import ast
    import pathlib
    root = pathlib.Path(REPO) / "um_plugin" / "openood"
    paths = {".".join(p.relative_to(root).with_suffix("").parts): p for p in root.rglob("*.py")}

    def resolved(target, names):
        found = [f"{target}.{n}" for n in names if f"{target}.{n}" in paths]
        return found or [t for t in (target, f"{target}.__init__") if t in paths]

    out = {}
    for module, path in sorted(paths.items()):
        tree = ast.parse(path.read_text())
        package = module.rpartition(".")[0].split(".") if "." in module else []
        top, inner = set(), []
        for node in tree.body:
            if not isinstance(node, ast.ImportFrom):
                continue
            names = [a.name for a in node.names]
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("um_plugin.openood."):
                target = node.module[len("um_plugin.openood."):]
            else:
                continue
            top.update(resolved(target, names) if target else names)
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, ast.Import):
                        inner += [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        inner.append("." * node.level + (node.module or ""))
        out[module] = (top, inner)
    return out


def test_adapter_has_no_import_circle_and_imports_at_the_top():
    """No import circle hides in function-level imports: only the optional dependency
    (OpenOOD) is imported inside functions."""
    imports = _adapter_imports()
    assert {"register", "postprocessors", "trainers", "spawn"} <= {
        m.rpartition(".")[2] for m in imports}
    for module, (_, inner) in imports.items():
        assert all(name.startswith("openood") for name in inner), (module, inner)
    done, active = set(), []

    def visit(module):
        assert module not in active, f"import circle: {' -> '.join(active + [module])}"
        if module in done or module not in imports:
            return
        active.append(module)
        for target in imports[module][0]:
            visit(target)
        active.pop()
        done.add(module)

    for module in imports:
        visit(module)
