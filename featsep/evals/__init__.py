"""SAEBench-faithful evaluations: core, sparse_probing, absorption (registered by name).

    results = featsep.evals.evaluate("runs/my_run", evals=["core", "sparse_probing", "absorption"])
    results["core"]["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"]

Each eval is one module with a settings class and a run function registered in
featsep.evals.registry; outputs follow SAEBench's JSON schema (featsep.evals.schema).
"""

from featsep.evals.registry import EvalResult, EvalSettings, available_evals, get_eval, register_eval
from featsep.evals.runner import evaluate, run_eval_cli

__all__ = ["evaluate", "run_eval_cli", "available_evals", "get_eval", "register_eval", "EvalResult", "EvalSettings"]
