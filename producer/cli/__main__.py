"""`python -m producer.cli`: how workers and tests start the CLI without the entry point."""

from producer.cli import main

main()
