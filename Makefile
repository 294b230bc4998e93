# The two set-up commands of the README. Both create .venv when it is absent.
# The commands are then in .venv/bin: `.venv/bin/fasterrcnn ...`, or `source .venv/bin/activate` first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on disk on these machines; pinning it first keeps pip from
# resolving the project's torch range to the newest CUDA build (gigabytes of packages).
TORCH_PIN := torch==2.13.0
# Where pip looks the pin up: empty = pip's configured index (here, the wheel on disk). The
# containers pick PyTorch's CPU or CUDA wheels with it: `make venv TORCH_INDEX=<wheel index URL>`.
TORCH_INDEX :=
# The package's extras: the tests also build the documentation (tests/test_docs.py), read videos and export int8.
EXTRAS := test,docs,deploy,video,int8

.PHONY: test demo venv venv-runtime browser docs clean

# venv-runtime: the package and what it needs to run (torch pin first), no extras: what `make demo`
# and the containers use. venv: that, plus the extras the tests and the documentation need.
venv-runtime: $(VENV)/.runtime
venv: $(VENV)/.installed

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) )$(TORCH_PIN)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# Two worker processes, one per core of the 2-core machines CI runs on; a test file's tests stay together
# (--dist loadfile), so its module fixtures (trained runs, exported models) are built once.
test: venv browser
	$(PY) -m pytest -q -n 2 --dist loadfile

# The end-to-end page test drives Debian's chromium through Playwright (never `playwright
# install`: no browser downloads here). Without root or apt, that one test is skipped with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test will be skipped"

# The documentation site in site/ (mkdocs.yml); strict: a warning fails the build, as in the tests.
docs: venv
	$(PY) -m mkdocs build --strict

demo: venv-runtime
	$(VENV)/bin/fasterrcnn demo --output demo_output

clean:
	rm -rf $(VENV) demo_output site build dist src/*.egg-info
