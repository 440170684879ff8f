# One-command entry points. Each target creates the virtual environment when missing.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# kedro-viz pulls in kedro-telemetry; never send usage data (also see .telemetry).
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: install run report smoke test lint viz viz-build mlflow-ui tracking-server serve benchmark ablations device-check clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/.installed  ## create .venv and install the project and its test tools at the measured versions

run: install  ## the full run: ingest MNIST, train the CVAE and its prior, evaluate (conf/base + conf/local)
	$(BIN)/kedro run

report: install  ## the report's configuration, measured by our code (conf/report; results in data/*/report)
	$(BIN)/kedro run --env report

smoke: install  ## the whole flow on a sample in about a minute (conf/smoke)
	$(BIN)/kedro run --env smoke

test: install  ## the test suite (tiny synthetic data, no network)
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

viz: install  ## Kedro-Viz on http://127.0.0.1:4141/?types=nodes,datasets,parameters&expandAllPipelines=true
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

viz-build: install  ## static Kedro-Viz site in ./build, served on http://127.0.0.1:4142
	$(BIN)/kedro viz build
	$(BIN)/python -m cvae_mnist.glue.static_site build --port 4142

mlflow-ui: install  ## MLflow UI on http://127.0.0.1:5000, opened on the training runs (link printed)
	@$(BIN)/python -c "import mlflow; e = mlflow.MlflowClient('sqlite:///mlflow.db').get_experiment_by_name('cvae_mnist'); \
	print('The training runs: http://127.0.0.1:5000/#/experiments/' + (e.experiment_id + '/runs' if e else '') + '?workflowType=machine_learning')"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

tracking-server: install  ## an MLflow tracking server on http://127.0.0.1:5002 (kedro run --env server)
	$(BIN)/mlflow server --backend-store-uri sqlite:///mlflow-server.db --serve-artifacts \
	  --artifacts-destination mlartifacts --host 127.0.0.1 --port 5002

# where `make serve` finds the champion: the project's store, or a server's URL
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
PORT ?= 5001
serve: install  ## serve the registered champion on http://127.0.0.1:5001 (or MODEL=models:/<id>, PORT=)
	MLFLOW_TRACKING_URI="$(MLFLOW_TRACKING_URI)" $(BIN)/python -m cvae_mnist.glue.model_server $(MODEL) --port $(PORT)

benchmark: install  ## time to quality and training speed: the report's loop against ours, side by side
	test -f data/05_model_input/mnist_train.pt || $(BIN)/kedro run --pipeline data_ingestion
	$(BIN)/python benchmarks/time_to_quality.py
	$(BIN)/python benchmarks/train_speed.py

ablations: install  ## the report's next steps, one change at a time from the default (needs a full run first)
	$(BIN)/python benchmarks/ablations.py

device-check: install  ## the GPU (or MPS) path end to end in a few minutes (docs/device-check.md)
	$(BIN)/python benchmarks/device_check.py --device auto

clean:  ## remove generated data, runs and the venv (keeps the raw MNIST files)
	find data -mindepth 2 -not -name .gitkeep -not -path 'data/01_raw/*' -delete
	rm -rf mlruns mlflow.db mlflow-server.db mlartifacts build $(VENV)
