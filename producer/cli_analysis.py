"""`distillery cost estimate|simulate` and `distillery router eval|calibrate`: is routing
worth it for this traffic, and which router, with which thresholds.

producer/cli.py imports the commands and attaches them once its groups exist:
`main.add_command(cost)`, and `router_eval` and `router_calibrate` to its `router` group.
They use cli.py's error handling, settings and consoles, but import cli.py only when a
command runs: at import time the two modules would import each other, and
`python -m producer.cli` (how workers are started) would fail on a half-initialised module.
"""

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import click

from producer.errors import ExitCode, UserError

F = TypeVar("F", bound=Callable[..., Any])


def _cli() -> ModuleType:
    from producer import cli

    return cli


def handle_errors(command: F) -> F:
    """producer.cli's handle_errors (one message, a named exit code), applied at call time."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _cli().handle_errors(command)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def _bad_input(code: ExitCode = ExitCode.BAD_INPUT) -> Iterator[None]:
    """A bad number, log or labelled file: one clear message, nothing done."""
    from producer.costs import CostInputError

    try:
        yield
    except CostInputError as exc:
        raise UserError(str(exc), code) from None
    except Exception as exc:
        # imported only now: the routers pull in the openai client, which `cost estimate`
        # never needs
        from workers.routers import RouterError

        if isinstance(exc, RouterError):
            raise UserError(str(exc), code) from None
        raise


def _plot_option() -> Any:
    return click.option(
        "--plot", "plot_path", type=click.Path(path_type=Path), help="draw a chart to PATH.png"
    )


def _classifier_option() -> Any:
    return click.option(
        "--classifier",
        type=click.Path(path_type=Path),
        help="classifier router file (default: [router] classifier)",
    )


@click.group("cost")
def cost() -> None:
    """What traffic costs on the configured tiers, routed or not."""


@cost.command("estimate")
@click.option("--requests", type=click.IntRange(1), required=True, help="number of requests")
@click.option("--mix", required=True, help="share per tier in config order, e.g. 0.7,0.2,0.1")
@click.option(
    "--avg-tokens", type=click.FloatRange(0), required=True, help="tokens per request (in + out)"
)
@click.option(
    "--output-share",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="share of those tokens that are completion (priced at output_per_1k)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def cost_estimate(
    requests: int, mix: str, avg_tokens: float, output_share: float, as_json: bool
) -> None:
    """Cost of REQUESTS requests all on the last tier, and split over the tiers by MIX."""
    from producer.costs import estimate, parse_mix, print_estimate

    tiers = _cli().settings().tiers
    with _bad_input(ExitCode.USAGE):
        shares = parse_mix(mix, list(tiers))
    data = estimate(
        tiers, requests=requests, mix=shares, avg_tokens=avg_tokens, output_share=output_share
    )
    if as_json:
        _cli().emit_json(data)
    else:
        print_estimate(_cli().out, data)


@cost.command("simulate")
@click.argument("log", type=click.Path(path_type=Path), required=False)
@click.option("--job", "job_id", type=int, help="use a finished job's prompts instead of LOG")
@click.option(
    "--strategies",
    default="all-frontier,rules,classifier,llm,cascade",
    show_default=True,
    help="comma-separated: all-frontier, rules, classifier, llm, random, cascade",
)
@click.option("--monthly-requests", type=click.IntRange(1), required=True, help="requests a month")
@_classifier_option()
@click.option(
    "--fallback-rate",
    type=click.FloatRange(0, 1),
    help="cascade: share escalated to the last tier (default: the job's, else 0.15)",
)
@click.option(
    "--completion-tokens",
    type=click.IntRange(0),
    help="answer tokens for rows without completion_tokens (default: as many as the prompt)",
)
@click.option("--sample", "sample_size", type=click.IntRange(1), help="route a seeded sample")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_plot_option()
@handle_errors
def cost_simulate(
    log: Path | None,
    job_id: int | None,
    strategies: str,
    monthly_requests: int,
    classifier: Path | None,
    fallback_rate: float | None,
    completion_tokens: int | None,
    sample_size: int | None,
    as_json: bool,
    plot_path: Path | None,
) -> None:
    """Route a traffic LOG (JSONL or CSV) or a finished --job with each strategy and project
    the monthly cost of each."""
    from producer import costs

    with _bad_input(ExitCode.USAGE):
        names = costs.parse_strategies(strategies)
    requests, rate, source = _traffic(log, job_id, completion_tokens)
    rate = fallback_rate if fallback_rate is not None else rate
    with _cli().console.status("routing the traffic..."):
        data = costs.simulate(
            costs.sample(requests, sample_size),
            settings=_cli().settings(),
            strategies=names,
            monthly_requests=monthly_requests,
            fallback_rate=costs.DEFAULT_FALLBACK_RATE if rate is None else rate,
            classifier_path=classifier,
        )
    data["source"] = source
    _finish(data, as_json, plot_path, costs.plot_simulation, costs.print_simulation)


def _traffic(
    log: Path | None, job_id: int | None, completion_tokens: int | None
) -> tuple[list[Any], float | None, str]:
    """The requests, the recorded fallback rate (jobs only) and a name for the source."""
    from sqlmodel import Session

    from producer import costs

    if (log is None) == (job_id is None):
        raise UserError("give a traffic LOG file or --job ID (one of them)", ExitCode.USAGE)
    if log is not None:
        with _bad_input():
            return costs.read_traffic(log, completion_tokens=completion_tokens), None, str(log)
    assert job_id is not None
    with Session(_cli().engine()) as session:
        requests, rate = costs.job_traffic(session, job_id)
    if not requests:
        raise UserError(f"job {job_id} has no answered prompts to simulate", ExitCode.BAD_INPUT)
    return requests, rate, f"job {job_id}"


def _finish(
    data: dict[str, Any], as_json: bool, plot_path: Path | None, plot: Any, show: Any
) -> None:
    if plot_path:
        with _bad_input(ExitCode.USAGE):
            plot(data, plot_path)
    if as_json:
        _cli().emit_json(data)
        return
    show(_cli().out, data, source=data["source"])
    if plot_path:
        _cli().out.print(f"plot: {plot_path}")


@click.command("eval")
@click.argument("labeled", type=click.Path(path_type=Path))
@click.option(
    "--routers",
    "router_names",
    default="rules,classifier,llm,random",
    show_default=True,
    help="comma-separated router names; random, the baseline, is always added",
)
@_classifier_option()
@click.option("--sample", "sample_size", type=click.IntRange(1), help="evaluate a seeded sample")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_plot_option()
@handle_errors
def router_eval(
    labeled: Path,
    router_names: str,
    classifier: Path | None,
    sample_size: int | None,
    as_json: bool,
    plot_path: Path | None,
) -> None:
    """Evaluate routers on LABELED prompts (CSV or JSONL with `label` and/or
    `weak_correct` and `strong_correct` columns): latency, last-tier share, accuracy and
    confusion matrix, quality and the cost-quality curve."""
    from producer.evaluation import evaluate, plot_evaluation, print_evaluation, sample_rows
    from producer.evaluation import read_labelled as read

    conf = _cli().settings()
    names = _router_names(router_names)
    with _bad_input():
        data = sample_rows(read(labeled, list(conf.tiers)), sample_size)
    with _cli().console.status("routing the labelled prompts..."):
        routers, skipped = _routers(names, conf, classifier, data.texts[0])
        result = evaluate(data, routers, settings=conf, skipped=skipped)
    result["source"] = str(labeled)
    _finish(result, as_json, plot_path, plot_evaluation, print_evaluation)


def _router_names(text: str) -> list[str]:
    from workers.routers import ROUTER_NAMES

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROUTER_NAMES]
    if unknown:
        raise UserError(
            f"unknown router {', '.join(unknown)}; choose from {', '.join(ROUTER_NAMES)}",
            ExitCode.USAGE,
        )
    return list(dict.fromkeys([*names, "random"]))


def _routers(
    names: list[str], conf: Any, classifier: Path | None, probe: str
) -> tuple[list[Any], list[dict[str, str]]]:
    """The routers that can run here, and why each of the others cannot."""
    from workers.routers.calibration import usable_router

    routers, skipped = [], []
    for name in names:
        router = usable_router(name, settings=conf, classifier_path=classifier, probe=probe)
        if isinstance(router, str):
            skipped.append({"router": name, "reason": router})
        else:
            routers.append(router)
    return routers, skipped


@click.command("calibrate")
@click.argument("sample", type=click.Path(path_type=Path))
@click.option(
    "--target-frontier-share",
    type=click.FloatRange(0, 1),
    required=True,
    help="share of the sample to send to the last tier",
)
@click.option(
    "--router",
    "router_name",
    type=click.Choice(["classifier", "random"]),
    default="classifier",
    show_default=True,
)
@_classifier_option()
@click.option(
    "--write-config",
    type=click.Path(path_type=Path),
    help="set [router] thresholds in this config file (the rest of it unchanged)",
)
@click.option(
    "--write-router", is_flag=True, help="store the thresholds in the classifier router file"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def router_calibrate(
    sample: Path,
    target_frontier_share: float,
    router_name: str,
    classifier: Path | None,
    write_config: Path | None,
    write_router: bool,
    as_json: bool,
) -> None:
    """Set the router's thresholds so that the target share of SAMPLE's prompts (CSV or
    JSONL with a `prompt` column) goes to the last tier. Without --write-config or
    --write-router, prints the TOML line to put in [router]."""
    from workers.routers.calibration import build_router, calibrate, has_scores

    if write_config and write_router:
        raise UserError("choose one of --write-config and --write-router", ExitCode.USAGE)
    if write_router and router_name != "classifier":
        raise UserError("--write-router stores thresholds in a classifier file", ExitCode.USAGE)
    conf = _cli().settings()
    texts = _sample_texts(sample)
    router = build_router(router_name, settings=conf, classifier_path=classifier)
    assert has_scores(router)  # the --router choices are the routers with a score
    with _cli().console.status("scoring the sample..."):
        result = calibrate(
            router.score(texts), target_share=target_frontier_share, previous=router.thresholds
        )
    written = _write_thresholds(result, conf, classifier, write_config, write_router)
    _show_calibration(result, router_name, conf, written, as_json)
    if write_router and "thresholds" in conf.router.model_fields_set:
        _cli().console.print(
            "note: [router] thresholds set in the config take precedence over the file's"
        )


def _sample_texts(sample: Path) -> list[str]:
    from producer.costs import read_traffic

    with _bad_input():
        requests = read_traffic(sample)
    texts = [r.text for r in requests if r.text is not None]
    if len(texts) < len(requests):
        raise UserError(f"{sample}: every row needs a 'prompt' to score", ExitCode.BAD_INPUT)
    return texts


def _write_thresholds(
    result: Any, conf: Any, classifier: Path | None, config: Path | None, to_router: bool
) -> str | None:
    """Where the thresholds were written, if anywhere."""
    from workers.routers.calibration import write_config_thresholds, write_file_thresholds

    if config is not None:
        write_config_thresholds(config, result.thresholds)
        return str(config)
    if to_router:
        path = classifier or Path(conf.router.classifier)
        write_file_thresholds(path, result, tiers=list(conf.tiers))
        return str(path)
    return None


def _show_calibration(
    result: Any, router_name: str, conf: Any, written: str | None, as_json: bool
) -> None:
    from workers.routers.calibration import thresholds_toml

    data = {
        "router": router_name,
        "rows": result.rows,
        "target_share": result.target_share,
        "target_count": result.target_count,
        "achieved_count": result.achieved_count,
        "achieved_share": result.achieved_share,
        "previous_thresholds": list(result.previous),
        "thresholds": list(result.thresholds),
        "written_to": written,
    }
    if as_json:
        _cli().emit_json(data)
        return
    out = _cli().out
    last = list(conf.tiers)[-1]
    out.print(
        f"{router_name} on {result.rows:,} prompts: {result.achieved_count:,} "
        f"({result.achieved_share * 100:.2f} %) go to {last}; target {result.target_count:,} "
        f"({result.target_share * 100:g} %)"
    )
    out.print(f"thresholds {list(result.previous)} → {list(result.thresholds)}")
    if written:
        out.print(f"written to {written}")
    else:
        out.print(f"[router]\n{thresholds_toml(result.thresholds)}", markup=False)
