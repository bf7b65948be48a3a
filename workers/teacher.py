"""Teacher jobs: every prompt goes to the teacher tier, and the finished job is reduced."""

from typing import Any

from workers.settings import TeacherConfig


def teacher_params(config: TeacherConfig, **overrides: Any) -> dict[str, Any]:
    """The job's frozen teacher settings: config values unless the submit overrode them."""
    params = {
        "tier": config.tier,
        "system_prompt": config.system_prompt,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
    }
    params.update({key: value for key, value in overrides.items() if value is not None})
    return params
