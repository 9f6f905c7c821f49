# rethink-dist: `make demo` (the main job) and `make test` (the suite) set everything up on a
# fresh Debian machine: the apt packages FFCV builds against, a .venv, and the package with
# its extras.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev chromium dataset-fashion-mnist openssh-server rsync sudo
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Where `make demo` keeps its results (MLflow store, Parquet tables, report).
RESULTS ?= results

.PHONY: demo test system-deps venv clean-venv

# FFCV compiles against OpenCV and libjpeg-turbo; the report's test opens its HTML in headless
# Chromium; Debian's dataset-fashion-mnist is the paper-scale data set; the lab-cluster test runs
# `ray up` over SSH to this machine (sshd, rsync, and sudo for the config's apt-get). Install them
# when missing (needs root or sudo), with services kept from starting (policy-rc.d): the test
# starts its own sshd on 127.0.0.1, no package's daemon may listen anywhere.
system-deps:
	@if pkg-config --exists opencv4 2>/dev/null && pkg-config --exists libturbojpeg 2>/dev/null && command -v chromium >/dev/null && [ -f $(FASHION_MNIST) ] && [ -x /usr/sbin/sshd ] && command -v rsync >/dev/null && command -v sudo >/dev/null; then \
		echo "system packages for FFCV, the report test, Fashion-MNIST and the lab-cluster test: present"; \
	else \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		echo "installing system packages for FFCV, the report test, Fashion-MNIST and the lab-cluster test: $(APT_PACKAGES)"; \
		POLICY=/usr/sbin/policy-rc.d; if [ ! -e $$POLICY ]; then printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$POLICY >/dev/null && $$SUDO chmod +x $$POLICY && trap "$$SUDO rm -f $$POLICY" EXIT; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) system-deps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[ffcv,dev,timm]'
	touch $(STAMP)

venv: $(STAMP)

demo: system-deps $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m rethink_dist.cli demo --storage $(RESULTS)

test: system-deps $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m pytest -q -p no:cacheprovider tests

clean-venv:
	rm -rf $(VENV)
