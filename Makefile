# Two commands on a fresh machine: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
REPOSITORY ?= model_repository
REPLICAS ?= 1
RAY_PORT ?= 6379

.PHONY: install models serve serve-ray stop-ray test test-all lint bench clean grpc-protos

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch from the local wheel cache; a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# ray: deploy/ray and the two-node cluster tests in tests/deploy/ray, which the default suite runs.
	$(PY) -m pip install --quiet -e '.[cpu,train,dev,ray]'
	touch $@

install: $(VENV)/.installed

models: install
	$(PY) -m export.defaults --repository $(REPOSITORY)

serve: models
	SERVICE_MODEL_REPOSITORY=$(REPOSITORY) HOST=$(HOST) PORT=$(PORT) $(PY) -m service

# Ray Serve (deploy/ray, docs/scaling.md): REPLICAS per family (or REPLICAS=auto: autoscaling) on HOST:PORT; a
# local Ray head (its token in state/ray/auth_token) unless RAY_ADDRESS.
serve-ray: models
	$(PY) -m pip install --quiet -e '.[ray]'
	$(PY) -m deploy.ray.launch up --repository $(REPOSITORY) --replicas $(REPLICAS) --host $(HOST) --port $(PORT) \
		--ray-port $(RAY_PORT)

stop-ray:
	$(PY) -m deploy.ray.launch down

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m "slow or not slow"

lint: install
	$(PY) -m ruff check .

# The committed gRPC code of service/grpc/protos/ from its vendored .proto files, by grpcio-tools 1.81.1 in a
# scratch venv: its protobuf 6.33 code runs on protobuf 6 and 7 (scripts/generate_grpc.py says why).
grpc-protos:
	$(PYTHON) -m venv $(VENV)/grpc-tools
	$(VENV)/grpc-tools/bin/pip install --quiet grpcio-tools==1.81.1
	PYTHONPATH=. $(VENV)/grpc-tools/bin/python scripts/generate_grpc.py

clean:
	rm -rf $(VENV) runs state .pytest_cache
