"""Every public function, class and method of the package says what it does and what it raises,
and every sampler lists the ``SampleResult.info`` keys it returns."""
import ast
import importlib
import inspect
import pkgutil
import textwrap

import pytest
import torch

import fastflow as ff
from fastflow.choice import BudgetSampler


def _modules():
    mods = [importlib.import_module(info.name)
            for info in pkgutil.walk_packages(ff.__path__, ff.__name__ + ".")]
    return mods + [ff]  # the package last: its names are re-exports, named after their modules first


def _in_package(obj) -> bool:
    return (getattr(obj, "__module__", "") or "").split(".")[0] == ff.__name__


def _public_members():
    """(qualified name, object) of the public functions and classes defined in the package: names
    without a leading underscore defined in their module, or listed in its ``__all__``."""
    seen, out = set(), []
    for mod in _modules():
        exported = set(getattr(mod, "__all__", ()))
        for name, obj in vars(mod).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not _in_package(obj):
                continue  # imported from elsewhere (torch, typing, ...)
            if obj.__module__ != mod.__name__ and name not in exported:
                continue  # imported from another module of the package: checked there
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            out.append((f"{mod.__name__}.{name}", obj))
    return out


MEMBERS = _public_members()
FUNCTIONS = [(n, o) for n, o in MEMBERS if inspect.isfunction(o)]
CLASSES = [(n, o) for n, o in MEMBERS if inspect.isclass(o)]


def _methods():
    """(qualified name, function) of the public methods each public class defines itself
    (no inherited ones, no dunders, no properties)."""
    out = []
    for cname, cls in CLASSES:
        for name, attr in cls.__dict__.items():
            if name.startswith("_") or isinstance(attr, property):
                continue
            if isinstance(attr, (classmethod, staticmethod)):
                attr = attr.__func__
            if not inspect.isfunction(attr):
                continue
            out.append((f"{cname}.{name}", attr))
    return out


METHODS = _methods()


def _raises(fn) -> bool:
    """Whether the function's own code has a ``raise`` statement (its docstring not counted)."""
    source = textwrap.dedent(inspect.getsource(inspect.unwrap(fn)))
    return any(isinstance(node, ast.Raise) for node in ast.walk(ast.parse(source)))


def test_the_walk_finds_the_api():
    names = {n.rsplit(".", 1)[-1] for n, _ in MEMBERS}
    assert {"FastFlowSampler", "plan_skips", "ErrorTableUCB", "SkipWrapper", "psnr", "adapt", "History",
            "GaussianFlow", "sample_round", "atomic_write", "VelocityField", "check_steps"} <= names
    methods = {n.split(".", 2)[-1] for n, _ in METHODS}
    assert {"UCB1.hyperparameters", "Bandit.select", "Bandit.update", "Bandit.state_dict", "History.append",
            "FastFlowSampler.deferred_updates", "FastFlowSampler.paper", "SkipWrapper.forward",
            "GaussianFlow.sample_data"} <= methods
    for name in ff.__all__:
        obj = getattr(ff, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert any(o is obj for _, o in MEMBERS), name


@pytest.mark.parametrize("name, obj", MEMBERS + METHODS, ids=[n for n, _ in MEMBERS + METHODS])
def test_has_a_docstring(name, obj):
    assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


@pytest.mark.parametrize("name, obj", MEMBERS, ids=[n for n, _ in MEMBERS])
def test_top_level_functions_and_classes_say_what_they_raise(name, obj):
    assert "Raises:" in (obj.__doc__ or ""), f"{name} has no 'Raises:' section"


RAISING = [(n, f) for n, f in METHODS if _raises(f)]


@pytest.mark.parametrize("name, fn", RAISING, ids=[n for n, _ in RAISING])
def test_methods_that_raise_say_so(name, fn):
    assert "Raises:" in (fn.__doc__ or ""), f"{name} raises but has no 'Raises:' section"


# -- samplers: the info keys they return ----------------------------------------------------------

def _runs():
    """For each sampler class, samplers and how many runs each makes before its keys are read."""
    return {
        ff.EulerSampler: [(ff.EulerSampler(4), 1)],
        ff.HeunSampler: [(ff.HeunSampler(4), 1)],
        ff.AdamsBashforthSampler: [(ff.AdamsBashforthSampler(4, order=2), 1),
                                   (ff.AdamsBashforthSampler(6, order=3), 1)],
        ff.ExtrapolatedEulerSampler: [(ff.ExtrapolatedEulerSampler(6, [3]), 1)],
        ff.FastFlowSampler: [(ff.FastFlowSampler(8), 2), (ff.FastFlowSampler(8, policy="bandit"), 2),
                             (ff.FastFlowSampler(8, policy="paper"), 2)],
        ff.TeaCacheSampler: [(ff.TeaCacheSampler(4), 1)],
        ff.TaylorSeerSampler: [(ff.TaylorSeerSampler(6), 1)],
        ff.FlowTurboSampler: [(ff.FlowTurboSampler(heun=2, pseudo=1, refine=0), 1)],
        ff.UniPCSampler: [(ff.UniPCSampler(4), 1)],
        BudgetSampler: [(BudgetSampler(8, calls=4, candidates=["ab2"]), 2)],
    }


SAMPLER_CLASSES = [o for _, o in CLASSES if issubclass(o, ff.Sampler) and o is not ff.Sampler]


def test_every_sampler_class_is_run_below():
    assert set(SAMPLER_CLASSES) == set(_runs())


@pytest.mark.parametrize("cls", SAMPLER_CLASSES, ids=[c.__name__ for c in SAMPLER_CLASSES])
def test_sampler_docstring_lists_its_info_keys(cls):
    doc = cls.__doc__ or ""
    assert "``SampleResult.info`` keys:" in doc, f"{cls.__name__} does not list its SampleResult.info keys"
    keys = set()
    for sampler, runs in _runs()[cls]:
        for _ in range(runs):
            result = sampler.sample(lambda x, t: -x, torch.ones(4, 3, dtype=torch.float64))
            keys |= set(result.info)
    assert "host_reads" in keys
    missing = sorted(k for k in keys if f"``{k}``" not in doc)
    assert not missing, f"{cls.__name__}'s docstring lacks the info keys {missing}"
