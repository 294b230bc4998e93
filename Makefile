# The two set-up commands of the README. Both create .venv when it is absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on disk on these machines; pinning it first keeps pip from
# resolving the project's torch range to the newest CUDA build (gigabytes of packages).
TORCH_PIN := torch==2.13.0

.PHONY: test demo venv browser clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: venv browser
	$(PY) -m pytest -q

# The end-to-end page test drives Debian's chromium through Playwright (never `playwright
# install`: no browser downloads here). Without root or apt, that one test is skipped with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test will be skipped"

demo: venv
	$(VENV)/bin/fasterrcnn demo --output demo_output

clean:
	rm -rf $(VENV) demo_output build dist src/*.egg-info
