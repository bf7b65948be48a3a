"""Whether the train extra is installed, checked without importing it (torch alone takes
~2 s to import), and the one message that says how to install it."""

import importlib.util

from workers.errors import BadConfig

MODULES = ("torch", "transformers", "peft", "gguf", "safetensors")
INSTALL = "pip install -e '.[train]'   (from a clone: make .venv/.installed-train)"


class TrainExtraMissing(BadConfig):
    """The local backend's libraries are not installed."""


def missing_modules() -> list[str]:
    missing = []
    for name in MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_train_extra() -> None:
    missing = missing_modules()
    if missing:
        raise TrainExtraMissing(
            f"--backend local needs the train extra ({', '.join(missing)} not installed):\n"
            f"  {INSTALL}\n"
            "torch is pinned (2.13.0) so that pip takes the CPU build; on a GPU machine "
            "install a CUDA build of torch first"
        )
