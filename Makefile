# pykata: build, test and benchmark targets. `make help` lists them.
PYTHON ?= python3
PROTO_OUT := agent/rpc/pb
PROTOS := $(wildcard protos/*.proto)

.PHONY: help setup proto test test-unit test-privileged test-vm lint bench guest demo clean

help:
	@echo "setup   install Debian and Python dependencies (root, Debian 12)"
	@echo "proto   regenerate $(PROTO_OUT) from protos/"
	@echo "lint    ruff and mypy (also run by the tests)"
	@echo "test    lint, then unit, privileged and VM tests"
	@echo "bench   benchmarks under bench/"
	@echo "guest   build a guest with osbuilder into build/guest"
	@echo "demo    build a guest, boot it under QEMU and run a container in it"

setup:
	./scripts/setup.sh

proto:
	$(PYTHON) protos/generate.py $(PROTO_OUT)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

test:
	$(PYTHON) -m pytest tests

test-unit:
	$(PYTHON) -m pytest tests/unit

test-privileged:
	$(PYTHON) -m pytest tests/privileged

test-vm:
	$(PYTHON) -m pytest tests/vm

bench:
	$(PYTHON) -m bench

demo:
	$(PYTHON) scripts/demo.py

guest:
	$(PYTHON) -m osbuilder.cli all --output build/guest

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
