"""`python -m simulator [--host H] [--port P] [--config FILE]`: the simulator without the
distillery CLI, e.g. as its own docker-compose service."""

import argparse

from simulator.behaviour import SimConfig
from simulator.runner import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--config", help="TOML or JSON file: {default: {...}, models: {...}}")
    args = parser.parse_args(argv)
    config = SimConfig.from_file(args.config) if args.config else SimConfig()
    run(config, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
