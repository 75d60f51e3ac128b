"""train.py --report-to tensorboard: the event files hold log.jsonl's values; missing tensorboard is one line."""

from __future__ import annotations

import json

import pytest

from clipreid.errors import UserError
from clipreid.tracking import Tracker, open_tracker
from clipreid.trainer import train
from train import Config as TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tensorboard_scalars_match_the_log(synthetic_small, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = train(TrainConfig(data_dir=synthetic_small, output_dir=tmp_path, model="tiny-vit", pretrained="none",
                                epochs=1, batch_size=16, lr=2e-3, progress=False, device="cpu", num_workers=0,
                                log_every=2, report_to="tensorboard"))
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # zero-shot, then the trained epoch
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for record in records:
        for key, value in record.items():
            if key == "epoch" or not isinstance(value, (int, float)):
                continue
            logged = {e.step: e.value for e in events.Scalars(f"epoch/{key}")}
            assert logged[record["epoch"]] == pytest.approx(value, rel=1e-6), key
    assert {"epoch/mAP", "epoch/train_loss", "epoch/lr", "epoch/logit_scale"} <= tags
    losses, lrs = events.Scalars("step/loss"), events.Scalars("step/lr")
    assert len(losses) == len(lrs) >= 2
    steps = [e.step for e in losses]
    assert steps == sorted(steps) and steps[0] == 2
    assert lrs[-1].value == pytest.approx(records[-1]["lr"], rel=1e-6)  # the last step's lr is the epoch's
    # the step losses are interval means: weighted by their micro-batches they give the epoch's mean loss
    sizes = [b - a for a, b in zip([0, *steps], steps, strict=False)]
    total = steps[-1]
    mean = sum(e.value * s for e, s in zip(losses, sizes, strict=True)) / total
    assert mean == pytest.approx(records[-1]["train_loss"], rel=1e-5)


def test_off_by_default_and_missing_tensorboard_is_one_line(tmp_path, monkeypatch):
    assert TrainConfig().report_to == "none"
    tracker = open_tracker("none", tmp_path)
    tracker.log_epoch({"epoch": 1, "mAP": 0.5})
    tracker.close()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="pip install tensorboard") as err:
        open_tracker("tensorboard", tmp_path)
    assert "\n" not in str(err.value)


def test_step_losses_restart_each_epoch():
    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def flush(self):
            pass

    tracker = Tracker(Writer())
    assert Tracker(make_writer=lambda: 1 / 0)._writer is None  # nothing is made before the first value
    tracker.log_step(2, 4.0, 2, 0.1)  # 2 micro-batches, loss sum 4 -> mean 2
    tracker.log_step(4, 10.0, 4, 0.1)  # the next 2 sum to 6 -> mean 3
    tracker.log_epoch({"epoch": 1, "train_loss": 2.5, "note": "text", "flag": True})
    tracker.log_step(6, 1.0, 2, 0.05)  # new epoch: sums restart
    losses = [(v, s) for t, v, s in tracker.writer.scalars if t == "step/loss"]
    assert losses == [(2.0, 2), (3.0, 4), (0.5, 6)]
    assert [t for t, _, _ in tracker.writer.scalars if t.startswith("epoch/")] == ["epoch/train_loss"]
