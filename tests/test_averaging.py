"""Weight averaging: the running mean, BN statistics measured again, and a run that averages and resumes."""

import pytest
import torch
from torch import nn

from reslab.errors import ConfigError
from reslab.train.averaging import WeightAverage, first_averaged_epoch, recompute_batchnorm
from reslab.checkpoint import load_checkpoint
from reslab.train.loop import fit, resume_run

from conftest import run_bundle_script
from test_train import strip_timing, tiny_config


def test_first_averaged_epoch_reads_fractions_and_epoch_counts():
    assert first_averaged_epoch(0.75, 40) == 31  # the last quarter: epochs 31-40
    assert first_averaged_epoch(0, 40) == 1
    assert first_averaged_epoch(10, 40) == 11
    assert first_averaged_epoch(0.5, 5) == 3  # 2.5 epochs in: the first whole epoch after it


def test_the_average_is_the_mean_of_the_weights_added():
    model = nn.Linear(3, 2)
    average = WeightAverage(model)
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            model.weight.fill_(value)
            model.bias.fill_(-value)
        average.add(model)
    assert average.count == 3
    assert torch.allclose(average.mean["weight"], torch.full((2, 3), 3.0))
    assert torch.allclose(average.mean["bias"], torch.full((2,), -3.0))
    restored = WeightAverage(model, average.state_dict(), average.count)
    assert restored.count == 3 and torch.equal(restored.mean["weight"], average.mean["weight"])


def test_batchnorm_statistics_are_measured_over_all_the_batches():
    model = nn.Sequential(nn.BatchNorm1d(2))
    model[0].running_mean.fill_(100.0)
    batches = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[4.0, 5.0], [6.0, 7.0]])]
    recompute_batchnorm(model.eval(), batches)
    assert torch.allclose(model[0].running_mean, torch.tensor([3.0, 4.0]))  # not an exponential mean
    assert model[0].momentum == 0.1 and not model.training  # settings given back


def test_averaging_that_would_start_after_the_last_epoch_is_warned_about(tmp_path, capsys):
    fit(tiny_config(tmp_path / "run", epochs=1, average_from=5), quiet=False)
    assert "average_from 5 lies beyond this run's 1 epochs" in capsys.readouterr().err
    assert not (tmp_path / "run" / "averaged.pt").exists()


def test_negative_average_from_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="average_from"):
        fit(tiny_config(tmp_path / "run", average_from=-1), quiet=True)


def test_an_averaging_run_saves_the_mean_of_its_epochs_and_resumes_it(tmp_path):
    # 4 epochs of 25 steps, averaging the last two; stopped after epoch 3 so epoch 3's weights can be read.
    config = dict(epochs=4, average_from=0.5)
    whole = fit(tiny_config(tmp_path / "whole", **config), quiet=True)
    assert [row.get("averaged_epochs") for row in whole.history] == [None, None, 1, 2]
    assert all("average_eval_error" in row for row in whole.history[2:])
    assert whole.history[-1]["average_eval_error"] < 0.5  # chance is 0.9: BN statistics were measured

    split = tmp_path / "split"
    stopped = fit(tiny_config(split, **config), quiet=True, should_stop=lambda step: step == 75)
    assert stopped.status == "interrupted" and len(stopped.history) == 3
    epoch3 = load_checkpoint(split / "last.pt").model_state
    resumed = resume_run(split, quiet=True)
    assert strip_timing(resumed.history) == strip_timing(whole.history)
    epoch4 = load_checkpoint(split / "last.pt").model_state
    averaged = load_checkpoint(split / "averaged.pt")
    for name, value in averaged.model_state.items():
        if "running" in name or "num_batches" in name:
            continue
        assert torch.allclose(value, (epoch3[name] + epoch4[name]) / 2, atol=1e-6), name
    # Its BN statistics are its own, not the last epoch's.
    running = [n for n in averaged.model_state if n.endswith("running_mean")]
    assert not all(torch.allclose(averaged.model_state[n], epoch4[n]) for n in running)
    assert (split / "summary.md").read_text().count("averaged over the last 2 epochs") == 1


def test_the_bundle_script_takes_the_average_and_says_so_on_the_card(tmp_path):
    import json

    def bundle(run):
        return run_bundle_script(run, "resnet8", tmp_path / "weights", "--averaged", command="reslab ...")

    (tmp_path / "weights").mkdir()
    fit(tiny_config(tmp_path / "run", epochs=4, average_from=2), quiet=True)
    result = bundle(tmp_path / "run")
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "weights" / "index.json").read_text())["resnet8"]
    bundled = load_checkpoint(tmp_path / "weights" / index["file"]).model_state
    averaged = load_checkpoint(tmp_path / "run" / "averaged.pt").model_state
    assert all(torch.equal(bundled[k], averaged[k]) for k in averaged)
    card = (tmp_path / "weights" / index["card"]).read_text()
    assert "the mean of those at the ends of epochs 3-4 of 4" in card and "averaged weights' val error %" in card
    assert index["epoch"] == 4

    fit(tiny_config(tmp_path / "plain", epochs=1), quiet=True)
    refused = bundle(tmp_path / "plain")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().endswith("averaged.pt: no such checkpoint")
