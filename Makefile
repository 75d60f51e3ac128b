# The two commands a new user needs: `make demo` and `make test`.
# Both create (or reuse) the virtual environment in .venv and install requirements.txt into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/synthetic_reid
DEMO_RUN := model/demo
# The tiny ViT trained from scratch on the CPU: a higher lr than the recipe's 4e-5 for pretrained CLIP weights.
DEMO_TRAIN := --model tiny-vit --pretrained none --data-dir $(DEMO_DATA) --epochs 8 --lr 2e-3 --run-name demo --overwrite

.PHONY: demo test lint venv clean-demo

venv: $(STAMP)

# Reinstalled only when requirements.txt changes.
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) download_data.py --source synthetic --data-dir data --synthetic-train-players 200 --force
	$(PY) preprocess_data.py --data-dir $(DEMO_DATA)
	$(PY) train.py $(DEMO_TRAIN)
	$(PY) predict.py --checkpoints $(DEMO_RUN) --data-dir $(DEMO_DATA) --output-dir $(DEMO_RUN)/submission
	$(PY) evaluate.py --checkpoints $(DEMO_RUN) --data-dir $(DEMO_DATA)
	@echo
	@echo "demo outputs:"
	@echo "  synthetic dataset     $(DEMO_DATA)/  (contact sheet: $(DEMO_DATA)/contact_sheet.png)"
	@echo "  DataFrames            $(DEMO_DATA)/train_df.csv  $(DEMO_DATA)/challenge_df.csv"
	@echo "  resolved configs      $(DEMO_DATA)/download_config.json  $(DEMO_DATA)/preprocess_config.json"
	@echo "  trained tiny model    $(DEMO_RUN)/last.pt  (log: $(DEMO_RUN)/log.jsonl, curves: $(DEMO_RUN)/curves.png)"
	@echo "  submissions           $(DEMO_RUN)/submission/{test,challenge}_{raw,k_reciprocal}.csv"
	@echo "  evaluation            $(DEMO_RUN)/eval/eval_results.md  (ranked lists: $(DEMO_RUN)/eval/ranked_lists.png)"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN)
