"""The code MLflow runs to build the served model ("models from code", see cvae_mnist.serving)."""

from mlflow.models import set_model

from cvae_mnist.serving import CVAEGenerator

set_model(CVAEGenerator())
