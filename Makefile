# bhive: `make run` boots Debian Linux to a shell, `make test` runs the tests.
# Both install what they need on a fresh Debian machine.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CSRC   := $(wildcard bhive/accel/softvmm/csrc/*.c bhive/accel/softvmm/csrc/*.h) bhive/accel/softvmm/_build.py

.PHONY: all deps run hello test test-all bench difftest softvmm clean chaos

all: deps

deps: $(STAMP)

$(STAMP): pyproject.toml setup.py $(CSRC) scripts/install-deps.sh
	scripts/install-deps.sh
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel cffi
	$(VPY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $(STAMP)

# Rebuild only the C core in place (development).
softvmm: deps
	$(VPY) bhive/accel/softvmm/_build.py

# The default VM (configs/default.toml): Debian's kernel and a busybox
# initramfs, fetched and cached on first use; Ctrl-A x quits.
run: deps
	$(VENV)/bin/bhive run

# The smallest guest: a greeting from every vCPU, then isa-debug-exit.
hello: deps
	@$(VENV)/bin/bhive run configs/hello.toml; status=$$?; \
	  if [ $$status -eq 1 ]; then echo "(status 1 is the hello guest's success: it wrote 0 to isa-debug-exit)"; \
	  else exit $$status; fi

test: deps
	$(VPY) -m pytest -q -ra

bench: deps
	$(VPY) benchmarks/run.py

# The chaos soak: Linux boots while every device actor is killed, >= 1000
# kills in all; prints restart latency per actor (benchmarks/chaos.py).
chaos: deps
	$(VPY) benchmarks/chaos.py --kills 1000

difftest: deps
	$(VPY) -m bhive.difftest --cases 1000000

clean:
	rm -rf $(VENV) .cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
	rm -f bhive/accel/softvmm/_softvmm*.so
