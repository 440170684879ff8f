"""The machine learning, with no Kedro and no MLflow: the CVAE, its prior, losses,
metrics, inference, the digit classifier, and the devices they run on."""
