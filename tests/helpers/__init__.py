"""What test modules share that is not a fixture (fixtures live in tests/conftest.py, which
imports from here). No test module imports another test module: they import from here."""
