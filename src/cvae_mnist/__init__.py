"""cvae-mnist: a conditional VAE on MNIST as a Kedro + PyTorch + MLflow project."""

import logging
import re
import warnings

__version__ = "0.1"

# Third-party warnings that a user of this project cannot act on.
NOISE = (
    r"register_new_resolver\(\) is deprecated",  # how kedro and kedro-mlflow register OmegaConf resolvers
    r"Add type hints to the `predict` method",  # kedro-mlflow's KedroPipelineModel, unused here
)


class _ThirdPartyNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(re.search(noise, record.getMessage()) for noise in NOISE)


def quiet_third_party_warnings() -> None:
    """Silence :data:`NOISE`; `kedro` calls this before it loads its plugins (the ``kedro.init``
    entry point). Kedro logs Python's warnings through the ``py.warnings`` logger, whose filter
    also catches the warnings that MLflow shows "once" in spite of ignore filters."""
    for noise in NOISE:
        warnings.filterwarnings("ignore", message=f".*{noise}")
    logging.getLogger("py.warnings").addFilter(_ThirdPartyNoise())


quiet_third_party_warnings()
