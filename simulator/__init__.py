"""An OpenAI-compatible model simulator for demos, tests, fault injection and load tests.

    from simulator import SimConfig, ModelBehaviour, start_in_thread
    cfg = SimConfig(models={"gpt-small": ModelBehaviour(latency_ms=50, skill=0.3)})
    with start_in_thread(cfg) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="x")

Answers are deterministic (see `simulator.answers` for the markers), confidence follows
prompt difficulty and model skill (`simulator.logprobs`), and latency, rate limits and
failures are configurable per model and at runtime (`simulator.behaviour`, `/admin/...`).
Imports nothing from the rest of Distillery.
"""

from simulator.behaviour import ModelBehaviour, SimConfig
from simulator.runner import RunningSimulator, run, start_in_thread
from simulator.server import build_app

__all__ = [
    "ModelBehaviour",
    "RunningSimulator",
    "SimConfig",
    "build_app",
    "run",
    "start_in_thread",
]
