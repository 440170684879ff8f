"""Project settings: hooks and configuration loading.

See https://docs.kedro.org/en/stable/configure/configuration_basics/ for the defaults.
"""

from cvae_mnist.hooks import MlflowErrorTagHook, NodeTimingHook, ValidateParametersHook

# Hooks run in last-in-first-out order; kedro-mlflow registers its own hooks.
HOOKS = (ValidateParametersHook(), NodeTimingHook(), MlflowErrorTagHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/local, conf/smoke, --env X) overrides parameters key by
    # key, so conf/local/parameters.yml may hold just `training: {epochs: 2}`.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
}
