# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test cluster cluster-docker bench clean

# torch first, pinned: pip takes the CPU wheel already on disk on a machine
# without a GPU and the CUDA build on a GPU host. The project's own range
# then admits it, so nothing newer is pulled in.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the demo sweep (30 digits runs) into runs/demo, then its analysis.
# A second `make demo` reuses every done run and finishes in seconds.
demo: $(STAMP)
	$(PY) -m sweep launch experiment=demo store=runs/demo
	$(PY) -m sweep analyze store=runs/demo out=runs/demo-report
	@echo "The sweep command is $(VENV)/bin/sweep: '. $(VENV)/bin/activate' puts it on your PATH."

test: $(STAMP)
	$(PY) -m pytest

# The cluster suite (tests/cluster, docs/cluster.md): Ray nodes started with `ray start` on
# hosts of their own (Linux network namespaces), the store on an S3 server, faults mid-sweep,
# Slurm running docker/slurm.sbatch. Needs root; installs Debian's Slurm, munge and
# libfaketime when they are missing. Without root every test skips and says why.
CLUSTER_PACKAGES := iproute2 util-linux slurm-wlm munge faketime
cluster: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(CLUSTER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing$$missing"; { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
	    echo "could not install$$missing: the tests that need them skip and say so"; fi; fi
	$(PY) -m pytest -m cluster tests/cluster -v

# docker/Dockerfile built and docker/compose.yaml's smoke launch run in containers (not in .ci/run:
# a Docker engine, a CUDA build of torch, minutes of downloads). docs/cluster.md, "In Docker".
cluster-docker: $(STAMP)
	tests/cluster/docker_image.sh
	$(PY) -m pytest -m cluster tests/cluster/test_compose.py -v

bench: $(STAMP)
	$(PY) -m tests.benchmarks.bench_curvature
	$(PY) -m tests.benchmarks.bench_monitor
	$(PY) -m tests.benchmarks.bench_spectrum
	$(PY) -m tests.benchmarks.bench_split
	$(PY) -m tests.benchmarks.bench_analysis
	$(PY) -m tests.benchmarks.bench_worker
	$(PY) -m tests.benchmarks.bench_sweep
	$(PY) -m tests.benchmarks.bench_store_scale

clean:
	rm -rf $(VENV) .pytest_cache
