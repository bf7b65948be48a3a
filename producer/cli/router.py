"""`distillery router train|eval|calibrate`: train the classifier router (on a labelled
file or a route job's own outcomes), compare routers on labelled prompts, and set a
router's thresholds for a target share of the last tier."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from producer.cli.common import (
    classifier_option,
    console,
    emit_json,
    engine,
    finish,
    handle_errors,
    out,
    plot_option,
    reported_as,
    settings,
)
from producer.errors import UserError
from workers.errors import ExitCode

if TYPE_CHECKING:
    from workers.routers.training import TrainReport

# Commands import the modules they work with when they run, so that `--help` loads none of
# them (producer/cli/common.py says which are heavy).


@click.group()
def router() -> None:
    """Train and inspect routers."""


@router.command("train")
@click.argument("labeled", type=click.Path(path_type=Path), required=False)
@click.option(
    "--from-job",
    "from_job",
    type=int,
    help="label a finished route job's prompts by their outcomes (escalated: hard; "
    "answered confidently below the last tier: easy)",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=Path("router.joblib"),
    show_default=True,
)
@click.option("--test-fraction", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="seeds the train/test split")
@click.option(
    "--features",
    default="tfidf",
    show_default=True,
    help="what the classifier sees: tfidf, structural, embedding, or a '+' stack "
    "(embedding needs the llama extra)",
)
@click.option(
    "--target-frontier-share",
    type=click.FloatRange(0, 1),
    help="thresholds chosen on the held-out rows so this share goes to the last tier "
    "(default: the share labelled hard), stored in the router file",
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def router_train(
    labeled: Path | None,
    from_job: int | None,
    out_path: Path,
    test_fraction: float,
    seed: int,
    features: str,
    target_frontier_share: float | None,
    as_json: bool,
) -> None:
    """Train the classifier router on LABELED (CSV or JSONL), on a route job's own
    outcomes (--from-job JOB), or on both.

    Rows carry a `label` (easy/medium/hard or a tier name), or `weak_correct` and
    `strong_correct` as in RouteLLM's data."""
    import dataclasses

    from workers.routers import router_thresholds
    from workers.routers.features import parse_features
    from workers.routers.training import train_classifier

    conf = settings()
    tiers = list(conf.tiers)
    with reported_as(ExitCode.USAGE):
        chosen: dict[str, Any] = {
            "features": parse_features(features),
            "frontier_share": target_frontier_share,
            "thresholds": router_thresholds(conf.router, tiers),
        }
    sources = None  # --from-job: where the rows came from
    with console.status("training the classifier router..."):
        if from_job is not None:
            result, sources = _train_from_job(
                from_job, labeled, out_path, tiers, test_fraction, seed, chosen
            )
        elif labeled is not None:
            result = train_classifier(
                labeled, out_path, test_fraction=test_fraction, seed=seed, tiers=tiers, **chosen
            )
        else:
            raise UserError("give a LABELED file, --from-job JOB, or both", ExitCode.USAGE)
    if as_json:
        emit_json(dataclasses.asdict(result))
        return
    if sources:
        out.print(sources, markup=False)
    out.print(f"trained on {result.train_rows} rows, tested on {result.test_rows} held out")
    out.print(
        f"held-out accuracy {result.held_out_accuracy:.3f}"
        + (f", AUC {result.held_out_auc:.3f}" if result.held_out_auc is not None else "")
    )
    if result.thresholds is not None:
        out.print(
            f"thresholds {result.thresholds} (stored in the file): "
            f"{_share(result.held_out_frontier_share)} of the held-out rows go to {tiers[-1]}, "
            f"target {_share(result.target_frontier_share)}"
        )
    out.print(f"router file: [bold]{result.path}[/]")
    out.print(
        "use it: distillery submit FILE --mode route --router classifier "
        f"--classifier {result.path}"
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _train_from_job(
    job_id: int,
    labeled: Path | None,
    out_path: Path,
    tiers: list[str],
    test_fraction: float,
    seed: int,
    chosen: dict[str, Any],
) -> tuple["TrainReport", str]:
    """The report of a router trained on JOB's outcomes, and where its rows came from."""
    from sqlmodel import Session

    from producer.status import get_job
    from workers.routers.history import train_from_job

    db = engine()
    with Session(db) as session:
        get_job(session, job_id)  # no such job: exit code 6, like every job command
    report = train_from_job(
        job_id,
        engine=db,
        out=out_path,
        labeled=labeled,
        tiers=tiers,
        test_fraction=test_fraction,
        seed=seed,
        **chosen,
    )
    return report, report.sources()


@router.command("eval")
@click.argument("labeled", type=click.Path(path_type=Path))
@click.option(
    "--routers",
    "router_names",
    default="rules,classifier,llm,random",
    show_default=True,
    help="comma-separated router names; random, the baseline, is always added",
)
@classifier_option()
@click.option("--sample", "sample_size", type=click.IntRange(1), help="evaluate a seeded sample")
@click.option(
    "--leave-domains-out",
    is_flag=True,
    help="cross-validate the classifier: folds over rows (in-domain) and over domains "
    "(out-of-domain), with bootstrap intervals, random and the oracle beside",
)
@click.option("--domain-column", default="domain", show_default=True)
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@click.option(
    "--features",
    "feature_sets",
    default="tfidf",
    show_default=True,
    help="with --leave-domains-out: comma-separated feature sets to compare, each of "
    "tfidf, structural, embedding or a '+' stack (tfidf+structural)",
)
@click.option("--bootstrap", type=click.IntRange(0), default=1000, show_default=True)
@click.option(
    "--at-share",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="with --leave-domains-out: also report quality at this share on the last tier",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@plot_option()
@handle_errors
def router_eval(
    labeled: Path,
    router_names: str,
    classifier: Path | None,
    sample_size: int | None,
    leave_domains_out: bool,
    domain_column: str,
    folds: int,
    feature_sets: str,
    bootstrap: int,
    at_share: float,
    seed: int,
    as_json: bool,
    plot_path: Path | None,
) -> None:
    """Evaluate routers on LABELED prompts (CSV or JSONL with `label` and/or
    `weak_correct` and `strong_correct` columns): latency, last-tier share, accuracy and
    confusion matrix, quality and the cost-quality curve. With --leave-domains-out, how
    well the classifier generalises to domains it never saw."""
    from producer.evaluation import evaluate, plot_evaluation, print_evaluation, sample_rows
    from producer.evaluation import read_labelled as read

    conf = settings()
    if leave_domains_out:
        if plot_path:
            raise UserError(
                "--plot draws the plain evaluation; drop --leave-domains-out", ExitCode.USAGE
            )
        options = {"folds": folds, "bootstrap": bootstrap, "share": at_share, "seed": seed}
        _generalisation(labeled, conf, domain_column, feature_sets, sample_size, options, as_json)
        return
    names = _router_names(router_names)
    with reported_as(ExitCode.BAD_INPUT):
        data = sample_rows(read(labeled, list(conf.tiers)), sample_size)
    with console.status("routing the labelled prompts..."):
        routers, skipped = _routers(names, conf, classifier, data.texts[0])
        result = evaluate(data, routers, settings=conf, skipped=skipped)
    result["source"] = str(labeled)
    finish(result, as_json, plot_path, plot_evaluation, print_evaluation)


def _generalisation(
    labeled: Path,
    conf: Any,
    column: str,
    feature_text: str,
    sample_size: int | None,
    options: dict[str, Any],
    as_json: bool,
) -> None:
    from producer.generalisation import (
        evaluate_generalisation,
        read_domain_labelled,
        subsample,
    )
    from producer.generalisation_report import print_generalisation
    from workers.routers.features import parse_features

    with reported_as(ExitCode.USAGE):
        names = ["+".join(parse_features(text)) for text in feature_text.split(",") if text.strip()]
    with reported_as(ExitCode.BAD_INPUT):
        data = subsample(read_domain_labelled(labeled, list(conf.tiers), column), sample_size)
    with console.status("cross-validating...") as status, reported_as(ExitCode.USAGE):
        result = evaluate_generalisation(
            data, feature_sets=names, progress=lambda text: status.update(text), **options
        )
    result["source"] = str(labeled)
    if as_json:
        emit_json(result)
        return
    print_generalisation(out, result, source=str(labeled))


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


@router.command("calibrate")
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
@classifier_option()
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
    from workers.routers.calibration import (
        build_router,
        calibrate,
        calibration_scores,
        has_scores,
    )

    if write_config and write_router:
        raise UserError("choose one of --write-config and --write-router", ExitCode.USAGE)
    if write_router and router_name != "classifier":
        raise UserError("--write-router stores thresholds in a classifier file", ExitCode.USAGE)
    conf = settings()
    texts = _sample_texts(sample)
    router = build_router(router_name, settings=conf, classifier_path=classifier)
    assert has_scores(router)  # the --router choices are the routers with a score
    with console.status("scoring the sample..."):
        result = calibrate(
            calibration_scores(router, texts),
            target_share=target_frontier_share,
            previous=router.thresholds,
        )
    written = _write_thresholds(result, conf, classifier, write_config, write_router)
    _show_calibration(result, router_name, conf, written, as_json)
    if write_router and "thresholds" in conf.router.model_fields_set:
        console.print("note: [router] thresholds set in the config take precedence over the file's")


def _sample_texts(sample: Path) -> list[str]:
    from producer.costs import read_traffic

    with reported_as(ExitCode.BAD_INPUT):
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
        emit_json(data)
        return
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
