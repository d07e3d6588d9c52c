"""SAEBench's output JSON (evals/base_eval_output.py).

One file per eval and SAE (featsep.rundir writes and reads them); the layout of the dict is
SAEBench's, so SAEBench's own plotting code and the reference runs' scripts read our files
unchanged.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from featsep.rundir import MISSING_METRICS_KEY, NAN_SENTINEL

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
