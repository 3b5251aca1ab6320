"""Each library is a separate distribution: its wheel installs and imports in a clean
virtual environment that holds only its declared dependencies."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "prefquant": {"torch"},
    "prefgraph": {"torch", "torch-geometric"},
    "prefgen": {"torch", "transformers", "diffusers", "peft", "safetensors"},
    "prefreward": {"torch", "transformers"},
}
SIBLINGS = {*PACKAGES, "pmg"}

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH (the README's commands install it)")


def _run(*args: str | Path, cwd: Path = REPO) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lock's versions as pip constraints, so the clean venvs reuse uv's cache, not the network."""
    path = tmp_path_factory.mktemp("lock") / "constraints.txt"
    text = _run("uv", "export", "--frozen", "--no-hashes", "--all-packages", "--no-emit-workspace", "--no-header",
                "--format", "requirements.txt")
    path.write_text(text)
    return path


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_wheel_installs_alone(package: str, tmp_path: Path, constraints: Path) -> None:
    dist = tmp_path / "dist"
    _run("uv", "build", "--package", package, "--wheel", "--out-dir", dist)
    (wheel,) = dist.glob(f"{package}-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = email.message_from_bytes(archive.read(f"{package}-0.1.0.dist-info/METADATA"))
    assert f"{package}/py.typed" in names
    declared = {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].split(";")[0].strip().lower()
                for r in metadata.get_all("Requires-Dist") or []}
    assert declared == PACKAGES[package], f"{package} declares {declared}"

    venv = tmp_path / "venv"
    _run("uv", "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    _run("uv", "pip", "install", "--quiet", "--python", python, wheel, "--constraint", constraints)
    installed = {line.split("==")[0].lower() for line in _run("uv", "pip", "freeze", "--python", python).splitlines()}
    assert not (installed & (SIBLINGS - {package})), f"{package} pulled in {installed & SIBLINGS}"
    probe = (
        "import sys, importlib; m = importlib.import_module(sys.argv[1]); "
        "assert m.__version__ == '0.1.0', m.__version__; "
        f"loaded = {{name.split('.')[0] for name in sys.modules}} & set({sorted(SIBLINGS)!r}); "
        "assert loaded == {sys.argv[1]}, loaded; print(m.__file__)"
    )
    location = _run(python, "-c", probe, package, cwd=tmp_path)
    assert str(venv) in location
