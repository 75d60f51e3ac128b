# The two commands a new user needs: `make demo` and `make test`.
# Both create (or reuse) the virtual environment in .venv and install requirements.txt into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/synthetic_reid

.PHONY: demo test lint venv clean-demo

venv: $(STAMP)

# Reinstalled only when requirements.txt changes.
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) download_data.py --source synthetic --data-dir data --force
	$(PY) preprocess_data.py --data-dir $(DEMO_DATA)
	@echo
	@echo "demo outputs:"
	@echo "  synthetic dataset     $(DEMO_DATA)/  (contact sheet: $(DEMO_DATA)/contact_sheet.png)"
	@echo "  DataFrames            $(DEMO_DATA)/train_df.csv  $(DEMO_DATA)/challenge_df.csv"
	@echo "  resolved configs      $(DEMO_DATA)/download_config.json  $(DEMO_DATA)/preprocess_config.json"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

clean-demo:
	rm -rf $(DEMO_DATA)
