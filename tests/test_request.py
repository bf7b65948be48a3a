"""workers.request: a chat request from the job's parameters, and the tier a prompt
escalates to next."""

from workers.request import build_request, next_tier


def test_request_building_and_escalation_chain() -> None:
    request = build_request(
        {"system_prompt": "S", "temperature": 0.2, "logprobs": True},
        [{"role": "user", "content": "q"}],
    )
    assert request["messages"][0] == {"role": "system", "content": "S"} and request["logprobs"]
    params = {"tiers": ["small", "medium", "frontier"], "fallback": ["medium", "frontier"]}
    assert next_tier(params, "small") == "medium"
    assert next_tier(params, "medium") == "frontier"
    assert next_tier(params, "frontier") is None
    assert (
        next_tier({"tiers": ["small", "medium", "frontier"], "fallback": ["frontier"]}, "small")
        == "frontier"
    )
