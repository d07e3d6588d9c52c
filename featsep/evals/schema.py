"""SAEBench's output JSON (evals/base_eval_output.py), and its final_info.json sections.

One file per eval and SAE under eval_results/ (featsep.rundir writes and reads them), in the
layout of SAEBench 8042bb38, so SAEBench's own plotting code reads them. final_info.json holds
one section per eval in the layout the reference runs wrote (SAEBench of early 2025: core as
unique_id/eval_cfg/metrics, absorption under its older key names), which is what the reference
runs' plot script reads; each eval's module converts its result (`final_info_section`), starting
from `saebench_section` here.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from featsep.rundir import MISSING_METRICS_KEY, NAN_SENTINEL, with_results_file

# The SAEBench commit whose formulas these evals reproduce (see saebench-spec.md).
SAEBENCH_COMMIT = "8042bb38"


def featsep_version() -> str:
    from featsep.version import __version__

    return __version__


def clean_nans(obj: Any) -> Any:
    """NaN and inf become NAN_SENTINEL (-1), as SAEBench writes them (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: clean_nans(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_nans(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return NAN_SENTINEL
    return obj


def non_finite_paths(node: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Dotted paths of the NaN/inf leaves of a metrics dict (before clean_nans hides them)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in non_finite_paths(v, path + (str(k),))]
    if isinstance(node, float) and not math.isfinite(node):
        return [".".join(path)]
    return []


def eval_output(
    eval_type_id: str,
    eval_config: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    details: list[dict[str, Any]],
    unstructured: dict[str, Any],
    sae_id: str,
    sae_cfg: dict[str, Any],
    eval_id: str | None = None,
) -> dict[str, Any]:
    """A result in SAEBench's schema; `sae_lens_release_id` is "featsep" for our SAEs. Metrics
    that are NaN are written as SAEBench's -1 and listed under eval_result_unstructured's
    "missing_metrics", so a reader never takes the sentinel for a value."""
    missing = non_finite_paths(metrics)
    if missing:
        unstructured = {**unstructured, MISSING_METRICS_KEY: missing}
    return clean_nans(
        {
            "eval_type_id": eval_type_id,
            "eval_config": eval_config,
            "eval_id": eval_id or str(uuid.uuid4()),
            "datetime_epoch_millis": int(time.time() * 1000),
            "eval_result_metrics": metrics,
            "eval_result_details": details,
            "eval_result_unstructured": unstructured,
            "sae_bench_commit_hash": f"{SAEBENCH_COMMIT} (reimplemented in featsep {featsep_version()})",
            "sae_lens_id": sae_id,
            "sae_lens_release_id": "featsep",
            "sae_lens_version": None,
            "sae_cfg_dict": sae_cfg,
        }
    )


# SAEBench's key order, as the reference runs' final_info sections list them
SAEBENCH_KEYS = (
    "eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics", "eval_result_details",
    "sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict",
    "eval_result_unstructured",
)


def saebench_section(result: dict[str, Any], results_file: Optional[Path]) -> dict[str, Any]:
    """A final_info section as the reference runs wrote SAEBench results: the whole result,
    details and SAE config included, in SAEBench's key order (plus where the result file is)."""
    ordered = {k: result[k] for k in SAEBENCH_KEYS if k in result}
    return with_results_file({**ordered, **{k: v for k, v in result.items() if k not in ordered}}, results_file)
