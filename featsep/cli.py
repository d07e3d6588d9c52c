"""The `featsep` command line: train, cache, eval, models (and sweep/report).

Each command is a thin shell over a library function; heavy imports happen inside the
commands so `featsep --help` is instant. Errors a user can cause are printed as one line
(set FEATSEP_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train and judge sparse autoencoders with feature-separation penalties.",
    pretty_exceptions_enable=False,
)

SetOption = typer.Option(None, "--set", help="override a config field: --set train.lr=3e-4 (repeatable)")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from featsep.config import ConfigError

    types: list[type[BaseException]] = [ConfigError, ValueError, FileNotFoundError, FileExistsError]
    with contextlib.suppress(ImportError):
        from featsep.train import NonFiniteLossError

        types.append(NonFiniteLossError)
    return tuple(types)


def _rank() -> int:
    """This process's rank in a torchrun job (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0") or 0) if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else 0


@contextlib.contextmanager
def _user_errors():
    """User errors, and a full disk (OSError ENOSPC), as one line and exit code 2. Under
    torchrun only rank 0 prints progress (stdout); every rank's error still reaches stderr."""
    quiet = open(os.devnull, "w") if _rank() > 0 else None
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield
    except _user_error_types() as e:
        if os.environ.get("FEATSEP_DEBUG"):
            raise
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except OSError as e:
        if e.errno != errno.ENOSPC or os.environ.get("FEATSEP_DEBUG"):
            raise
        where = f" while writing {e.filename}" if e.filename else ""
        typer.secho(f"error: no space left on device{where}; free space or choose another out_dir",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    finally:
        if quiet:
            quiet.close()


@app.command()
def models() -> None:
    """List the built-in offline language models (and whether they are converted yet)."""
    from featsep.lm import format_models_table

    typer.echo(format_models_table())


@app.command()
def architectures() -> None:
    """List the registered SAE architectures and penalties."""
    from featsep.penalties import penalties
    from featsep.sae import architectures as archs

    typer.echo("SAE architectures: " + ", ".join(archs()))
    typer.echo("penalties:         " + ", ".join(penalties()))


@app.command()
def datasets() -> None:
    """List the registered datasets: their kinds, whether they need the hub, what they hold."""
    from featsep.data import datasets as registered

    for entry in registered():
        hub = "hub" if entry.needs_hub else "offline"
        typer.echo(f"{entry.name:45s} {','.join(entry.kinds):20s} {hub:8s} {entry.description}")


@app.command()
def cache(
    config: Optional[Path] = typer.Argument(None, help="a run or sweep config (TOML): its [model] and [data] sections say what to cache"),
    out: Optional[Path] = typer.Option(None, help="output directory (default: the config's data.cache, so training then reads it)"),
    tokens: int = typer.Option(200_000, help="activations (tokens) to write"),
    set_: Optional[List[str]] = SetOption,
    model: Optional[str] = typer.Option(None, help="same as --set model.name=..."),
    hook: Optional[str] = typer.Option(None, help="same as --set model.hook=..."),
    dataset: Optional[str] = typer.Option(None, help="same as --set data.dataset=..."),
    resume: bool = typer.Option(True, help="continue an interrupted cache in OUT"),
) -> None:
    """Harvest activations once into a sharded on-disk cache that training and sweeps reuse."""
    with _user_errors():
        from featsep.config import RunConfig, SweepConfig, apply_overrides, read_toml, set_dotted, validate
        from featsep.data.cache import cache_from_config

        tree = read_toml(config) if config is not None else {}
        for key, value in (("model.name", model), ("model.hook", hook), ("data.dataset", dataset)):
            if value is not None:  # taken as written (a dataset named 2024-01 stays a string)
                set_dotted(tree, key, value, f"--{key.split('.')[1]}")
        apply_overrides(tree, set_ or [])
        kind = SweepConfig if "methods" in tree else RunConfig
        cfg = validate(kind, tree, source=str(config) if config else "config")
        target = out or cfg.data.cache  # the cache the config's training reads: harvest the text it names
        if target is None:
            raise ValueError("no output directory: pass --out DIR (or set data.cache in the config)")
        from featsep.pipeline import world

        job = world()  # under torchrun each rank harvests its share into its own shards
        cache_from_config(cfg.model, cfg.data, tokens, target, resume=resume, world=job, progress=job.rank == 0)


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="run config (TOML); see examples/"),
    set_: Optional[List[str]] = SetOption,
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue a killed run from RUN_DIR"),
) -> None:
    """Train SAE(s) from a config: model + text (or a cache) -> run dir."""
    with _user_errors():
        from featsep.pipeline import resume_from_dir, run_from_config

        if resume is not None:
            if config is not None:
                raise ValueError("give either CONFIG or --resume RUN_DIR, not both")
            resume_from_dir(resume, overrides=set_ or [])
        else:
            from featsep.config import load_config

            if config is None:
                raise ValueError("no config given: `featsep train examples/offline-default.toml`")
            run_from_config(load_config(config, set_ or []))


@app.command("eval")
def eval_(
    target: str = typer.Argument(..., help="a run dir, an SAE dir, a sweep dir, hf://ORG/REPO/PATH or saelens:RELEASE/SAE_ID"),
    evals: str = typer.Option("core,sparse_probing,absorption", help="comma-separated eval names"),
    set_: Optional[List[str]] = SetOption,
    model: Optional[str] = typer.Option(None, help="language model (default: the SAE's own)"),
    out_dir: Optional[Path] = typer.Option(None, help="where to write results (default: the run dir)"),
    hook: Optional[str] = typer.Option(None, help="the hook the SAE reads, e.g. blocks.12.hook_resid_post "
                                       "(default: the SAE's own; same as --set hook=...)"),
    baseline_dir: Optional[Path] = typer.Option(
        None, help="make TARGET (one SAE, e.g. a released one) a baseline run dir here: its identity (format, "
                   "source, sha256), the evals and the competition analysis, read by `featsep report` like a trained run"),
) -> None:
    """Evaluate SAE(s) with SAEBench-faithful metrics; results merge into final_info.json.

    TARGET: a run dir, a sweep dir, an SAE dir (featsep, SAELens, sparsify, dictionary_learning, Gemma Scope), or an
    SAE on the hub: hf://ORG/REPO/PATH (fetched into the HF cache; HF_HUB_OFFLINE=1 reads the cache only) or
    saelens:RELEASE/SAE_ID (needs sae-lens installed for its release list).

    Datasets: `featsep datasets` lists the registered ones. Your own labelled data: a local .csv/.jsonl/.json/.parquet
    file with a text and a label column, e.g. --set sparse_probing.datasets=/data/labels.jsonl (columns:
    sparse_probing.text_column, sparse_probing.label_column).

    With --out-dir, results go there only; the run dirs stay untouched. With --baseline-dir, TARGET becomes a
    baseline: model and hook come from the SAE's config, else --model/--hook are asked for."""
    with _user_errors():
        from featsep.evals import run_eval_cli
        from featsep.pipeline import world

        run_eval_cli(
            target,
            [e.strip() for e in evals.split(",") if e.strip()],
            settings=set_ or [],
            model=model,
            out_dir=str(out_dir) if out_dir else None,
            world=world(),  # under torchrun each rank evaluates its share of a sweep's SAEs
            hook=hook,
            baseline_dir=str(baseline_dir) if baseline_dir else None,
        )


@app.command()
def export(
    sae_dir: str = typer.Argument(..., help="an SAE: a dir (featsep or a foreign format), hf://ORG/REPO/PATH or saelens:RELEASE/SAE_ID"),
    out: Path = typer.Argument(..., help="where to write the copy (a new or empty dir)"),
    format_: str = typer.Option("saelens", "--format", help="saelens, sparsify or dictionary_learning"),
    force: bool = typer.Option(False, "--force", help="overwrite OUT when it holds an earlier export"),
) -> None:
    """Write a copy that SAELens, sparsify or dictionary_learning loads and runs on raw activations
    (normalisation folded in)."""
    with _user_errors():
        from featsep.sae.io import export_sae

        sae = export_sae(sae_dir, out, force=force, fmt=format_)
        typer.echo(f"wrote {out} ({format_} format; normalization factor {sae.cfg.normalization_factor} "
                   "folded into the weights)")


@app.command()
def report(
    path: Path = typer.Argument(..., help="sweep dir, run dir, or dir of run dirs"),
    out: Optional[Path] = typer.Option(None, help="output dir (default PATH/report)"),
    labels: Optional[Path] = typer.Option(None, help="JSON file: {run_dir_name: label}"),
    title: Optional[str] = typer.Option(None, help="page title"),
) -> None:
    """Build report.html, summary.md and figures/ comparing methods at matched L0."""
    with _user_errors():
        import json

        from featsep.report import build_report

        mapping = None
        if labels is not None:
            if not labels.is_file():
                raise FileNotFoundError(f"labels file {labels} does not exist")
            mapping = json.loads(labels.read_text())
        page = build_report(path, out_dir=out, labels=mapping, title=title)
    typer.echo(f"report: {page}")


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="sweep config (TOML); see examples/separation-study-*.toml"),
    set_: Optional[List[str]] = SetOption,
    no_eval: bool = typer.Option(False, "--no-eval", help="train only"),
    report_: bool = typer.Option(True, "--report/--no-report", help="build the report at the end"),
) -> None:
    """Train every run of a study on one shared activation pass, evaluate, and report."""
    with _user_errors():
        from featsep.config import SweepConfig, load_config
        from featsep.sweep import run_sweep

        cfg = load_config(config, set_ or [], model=SweepConfig)
        out = run_sweep(cfg, evaluate=not no_eval)
        if report_ and _rank() == 0:  # run_sweep returns on every rank after the last one's work
            from featsep.report import build_report

            typer.echo(f"report: {build_report(out)}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
