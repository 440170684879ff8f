"""The code MLflow runs to build the served model ("models from code", see cvae_mnist.glue.serving)."""

from mlflow.models import set_model

from cvae_mnist.glue.serving import CVAEGenerator

set_model(CVAEGenerator())
