"""Fixtures shared across the suite: a small generated catalog, the real MovieLens data, the benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ML_LATEST_SMALL = REPO.parent / "shared" / "datasets" / "ml-latest-small"
TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("single_thread")``):
    their tensors are tiny, and on a busy 2-core machine spin-waiting intra-op threads made a 2 s
    training take 20 s or more."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def fresh_import() -> Callable[[str, Sequence[str]], None]:
    """``check(package, not_loaded)``: in a fresh interpreter (this one has imported everything),
    ``import package`` defines every name of its ``__all__`` and leaves the modules ``not_loaded``
    unimported: what a package's light import promises."""

    def check(package: str, not_loaded: Sequence[str]) -> None:
        code = ("import importlib, sys\n"
                "module = importlib.import_module(sys.argv[1])\n"
                "missing = [n for n in module.__all__ if not hasattr(module, n)]\n"
                "assert not missing, f'__all__ names not defined: {missing}'\n"
                "loaded = [m for m in sys.argv[2:] if m in sys.modules]\n"
                "assert not loaded, f'import {sys.argv[1]} loaded {loaded}'\n")
        result = subprocess.run([sys.executable, "-c", code, package, *not_loaded], capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr

    return check


@pytest.fixture(scope="session")
def benchmark_module() -> Callable[[str], ModuleType]:
    """``load(name)``: the script ``benchmarks/<name>.py`` as a module, executed once a session (the
    benchmarks are scripts, not a package, so they are loaded from their path)."""

    def load(name: str) -> ModuleType:
        module_name = f"pmg_benchmark_{name}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
            assert spec is not None and spec.loader is not None, name
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses look their module up while the file executes
            spec.loader.exec_module(module)
        return sys.modules[module_name]

    return load


@pytest.fixture(scope="session")
def ml_latest_small() -> Path:
    """The real MovieLens latest-small folder beside the checkout (present on every dev and CI machine)."""
    assert (ML_LATEST_SMALL / "ratings.csv").is_file(), f"MovieLens latest-small is expected at {ML_LATEST_SMALL}"
    return ML_LATEST_SMALL


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 150-user, 240-item catalog written in the dataset format (read-only for tests)."""
    from pmg.data import CatalogConfig, write_catalog

    out = tmp_path_factory.mktemp("catalog") / "dataset"
    return write_catalog(out, CatalogConfig(seed=7, num_users=150, num_items=240, interactions_per_user=16))


@pytest.fixture(scope="session")
def tiny_pipeline() -> Callable[..., int]:
    """``run(path, *overrides)``: `pmg pipeline` with ``tests/tiny.yaml`` (every stage at tiny sizes)
    on run directory ``path``, the zoo cached beside it, never in the checkout; the exit status."""
    from pmg.cli import main

    def run(path: Path, *overrides: str) -> int:
        return main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(path), f"zoo.cache_dir={path.parent / 'zoo-cache'}",
                     *overrides])

    return run
