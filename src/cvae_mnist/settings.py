"""Project settings: hooks and configuration loading."""

from cvae_mnist.glue.console import RunSummaryHook
from cvae_mnist.glue.hooks import LineageHook, NodeTimingHook, ParametersHook, RunLockHook
from cvae_mnist.glue.tracking import MlflowTrackingHook

# kedro-mlflow's hook is registered here, as MlflowTrackingHook, instead of by the plugin.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
_timings = NodeTimingHook()
# Hooks run in last-in-first-out order (those marked tryfirst before the others): a run is
# checked (lock, then stale inputs) before its MLflow run starts, and node timings reach
# the MLflow run before it ends; the summary comes last.
HOOKS = (
    RunSummaryHook(),
    MlflowTrackingHook(_timings),
    _timings,
    LineageHook(),
    RunLockHook(),
    ParametersHook(),
)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/local, conf/smoke, --env X) overrides parameters, globals and
    # mlflow.yml key by key, so conf/local/parameters.yml may hold just `training: {epochs: 2}`.
    "merge_strategy": {"parameters": "soft", "globals": "soft", "mlflow": "soft"},
}
