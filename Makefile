# The two set-up commands of the README. Both create .venv when it is absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on disk on these machines; pinning it first keeps pip from
# resolving the project's torch range to the newest CUDA build (gigabytes of packages).
TORCH_PIN := torch==2.13.0

.PHONY: test demo venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: venv
	$(PY) -m pytest -q

demo: venv
	$(VENV)/bin/fasterrcnn demo --output demo_output

clean:
	rm -rf $(VENV) demo_output build dist src/*.egg-info
