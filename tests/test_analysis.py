"""The paper's evidence, mechanics only: tiny depths, few steps, tiny data."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import reslab
from reslab.analysis import experiments
from reslab.analysis.deepen import deepen, max_output_difference
from reslab.analysis.experiments import (ExperimentSettings, Member, _member_config, degradation, run_members,
                                        shortcuts, table6)
from reslab.analysis.responses import layer_responses, response_layers
from reslab.errors import ConfigError, SpecError
from reslab.train.loop import fit

from conftest import cli

pytest.importorskip("sklearn")


def trained_resnet(name="resnet20", steps=20, **kw):
    """A few SGD steps on random data so BN statistics and weights are non-trivial."""
    torch.manual_seed(0)
    model = reslab.create_model(name, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_deepened_resnet_is_exact_in_eval_and_train_mode(shortcut):
    model = trained_resnet(shortcut=shortcut)
    result = deepen(model, add=4)
    assert result.spec.depth == 28 and sum(result.added.values()) == 4
    batches = [(torch.randn(8, 3, 16, 16), None) for _ in range(3)]
    assert max_output_difference(model, result.model, batches, train_mode=False) <= 1e-6
    assert max_output_difference(model, result.model, batches, train_mode=True) <= 1e-6
    # Inserted at the end of stage 3 only:
    only3 = deepen(model, add=2, stages=[2])
    assert len(only3.model.stages[2].blocks) == 5 and len(only3.model.stages[0].blocks) == 3


def test_deepened_plain_passes_signal_in_eval_mode_only():
    model = trained_resnet("plain20")
    result = deepen(model, add=3)
    batches = [(torch.randn(8, 3, 16, 16), None) for _ in range(2)]
    assert max_output_difference(model, result.model, batches, train_mode=False) <= 1e-4
    assert max_output_difference(model, result.model, batches, train_mode=True) > 1e-3


def test_deepen_refuses_option_c_and_bad_stages():
    with pytest.raises(SpecError, match="option C"):
        deepen(trained_resnet(shortcut="C", steps=1), add=1)
    with pytest.raises(SpecError, match="stage 5"):
        deepen(trained_resnet(steps=1), add=1, stages=[4])


def test_response_std_matches_a_hand_computation():
    model = trained_resnet("resnet", depth=8)  # stem + one block per stage: 7 3x3 layers
    layers = response_layers(model)
    assert [n for n, _ in layers] == ["stem.bn", "stages.0.blocks.0.bn1", "stages.0.blocks.0.bn2",
                                      "stages.1.blocks.0.bn1", "stages.1.blocks.0.bn2", "stages.2.blocks.0.bn1",
                                      "stages.2.blocks.0.bn2"]
    batches = [(torch.randn(5, 3, 16, 16), None) for _ in range(3)]
    measured = layer_responses(model, batches)
    # By hand: run the stem, take BN's output (before ReLU), std over every element of every batch.
    with torch.no_grad():
        stem_out = torch.cat([model.stem.bn(model.stem.conv(x)).flatten() for x, _ in batches]).double()
        block = model.stages[0].blocks[0]
        h = [torch.relu(model.stem.bn(model.stem.conv(x))) for x, _ in batches]
        bn2_out = torch.cat([block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))).flatten() for x in h]).double()
    assert measured[0].std == pytest.approx(stem_out.std(unbiased=False).item(), rel=1e-6)
    assert measured[2].std == pytest.approx(bn2_out.std(unbiased=False).item(), rel=1e-6)


TINY = dict(data="digits", budget=0.0005, eval_split="val", extra={"batch_size": 64, "eval_every": 1})


def test_degradation_experiment_writes_figures_table_report_and_resumes(tmp_path):
    settings = ExperimentSettings(out=tmp_path / "deg", **TINY)
    report = degradation(settings, [8, 14])
    text = report.read_text()
    for name in ("figure6.png", "report.md", "table.md", "results.json"):
        assert (tmp_path / "deg" / name).exists()
    assert "REDUCED BUDGET" in text
    assert re.search(r"\|\s+8 \|", text) and re.search(r"\|\s+14 \|", text)
    results = json.loads((tmp_path / "deg" / "results.json").read_text())
    assert set(results["histories"]) == {"plain8", "plain14", "resnet8", "resnet14"}
    assert all(h[-1]["step"] == 32 for h in results["histories"].values())  # 0.0005 * 64k
    # Identical data order: same seed, same recipe in every member.
    configs = [yaml.safe_load((tmp_path / "deg" / "members" / m / "config.yaml").read_text())
               for m in ("plain8", "resnet8")]
    assert configs[0]["seed"] == configs[1]["seed"] and configs[0]["iterations"] == configs[1]["iterations"]
    # Rerunning skips finished members.
    before = (tmp_path / "deg" / "members" / "plain8" / "last.pt").stat().st_mtime_ns
    degradation(settings, [8, 14])
    assert (tmp_path / "deg" / "members" / "plain8" / "last.pt").stat().st_mtime_ns == before


def test_interrupted_member_is_resumed(tmp_path):
    settings = ExperimentSettings(out=tmp_path / "sc", **TINY)
    member = Member("optionA", "A", 8, 0, {"model": "resnet", "model_options": {"depth": 8, "shortcut": "A"}})
    stopped = fit(_member_config(settings, member), quiet=True, should_stop=lambda s: s == 10)
    assert stopped.status == "interrupted"
    histories = run_members(settings, [member])
    assert histories["optionA"][-1]["step"] == 32


def test_table6_and_shortcuts_tables(tmp_path):
    report = table6(ExperimentSettings(out=tmp_path / "t6", **TINY), [8], seeds=2)
    assert "+-" in report.read_text() and "ResNet-8" in report.read_text()
    report = shortcuts(ExperimentSettings(out=tmp_path / "sc", **TINY), depth=8)
    text = report.read_text()
    assert "optionA" in text and "optionC" in text and "plain" in text
    assert (tmp_path / "sc" / "shortcuts.png").exists()


def test_cli_deepen_then_continue_training(tmp_path):
    run = tmp_path / "r8"
    assert cli("train", "--recipe", "fast", "--model", "resnet", "--set", "model_options.depth=8", "--data", "digits",
               "--epochs", "2", "--batch-size", "64", "--out", str(run), "--quiet").returncode == 0
    deep = tmp_path / "deep.pt"
    result = cli("deepen", str(run), "--add", "2", "--where", "3", "--out", str(deep))
    assert result.returncode == 0, result.stderr
    assert "eval mode 0, train mode 0" in result.stdout and "depth 12" in result.stdout
    result = cli("train", "--recipe", "fast", "--init-from", str(deep), "--data", "digits", "--epochs", "1",
                 "--batch-size", "64", "--out", str(tmp_path / "cont"), "--quiet")
    assert result.returncode == 0, result.stderr
    from reslab.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "cont" / "last.pt").spec.depth == 12
    result = cli("analyze", "responses", str(run), str(tmp_path / "cont"), "--out", str(tmp_path / "resp"))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "resp" / "responses.csv").read_text().splitlines()
    assert len(lines) == 1 + 7 + 11 and (tmp_path / "resp" / "responses.png").exists()


def test_parallel_members_finish_and_a_failing_member_is_named(tmp_path):
    settings = ExperimentSettings(out=tmp_path / "par", jobs=2, **TINY)
    members = [Member("resnet8", "resnet", 8, 0, {"model": "resnet", "model_options": {"depth": 8}})]
    started = []
    real_popen = experiments.subprocess.Popen

    def recording_popen(command, **kw):
        started.append(Path(command[command.index("--config") + 1]).parent.name)
        return real_popen(command, **kw)

    # A member whose training fails (depth 9 is not 6n+2) is reported by name with its error line,
    # after the healthy members beside it have finished.
    members += [Member("resnet20", "resnet", 20, 0, {"model": "resnet", "model_options": {"depth": 20}}),
                Member("broken", "resnet", 9, 0, {"model": "resnet", "model_options": {"depth": 9}})]
    experiments.subprocess.Popen = recording_popen
    try:
        with pytest.raises(ConfigError, match=r"members failed: broken: .*6n\+2"):
            run_members(settings, members)
    finally:
        experiments.subprocess.Popen = real_popen
    assert started == ["resnet20", "broken", "resnet8"]  # deepest first; the shallow one fills the freed slot
    for name in ("resnet8", "resnet20"):
        summary = json.loads((tmp_path / "par" / "members" / name / "summary.json").read_text())
        assert summary["steps"] == 32, name


def test_ctrl_c_stops_parallel_members_with_checkpoints_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "int"
    command = [sys.executable, "-m", "reslab", "experiment", "shortcuts", "--depth", "8", "--data", "digits",
               "--budget", "0.003", "--jobs", "2", "--set", "batch_size=64", "--set", "eval_every=1000",
               "--out", str(out), "--quiet"]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    members = out / "members"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(members.glob("*/run.json"))) < 2:  # both training
        time.sleep(0.1)
    time.sleep(0.5)
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=120)
    # Once (1 of 30+ CI runs, stop 14) this read 0: the whole experiment had finished. Say what it printed.
    assert parent.returncode == 130 and "interrupted" in err, (parent.returncode, err[-2000:],
                                                               sorted(p.name for p in members.glob("*/summary.json")))
    assert "rerun the same command to resume" in err
    stopped = [d for d in members.iterdir() if (d / "last.pt").exists() and not (d / "summary.json").exists()]
    assert len(stopped) == 2  # each running member saved a checkpoint when the experiment was stopped
    # Rerun here, one member at a time (in this process: no Python to start per member); it resumes the two.
    threads = torch.get_num_threads()
    try:
        rerun = cli(*command[3:command.index("--jobs")], *command[command.index("--jobs") + 2:])
    finally:
        torch.set_num_threads(threads)  # the stopped members' configs hold one thread each
    assert rerun.returncode == 0, rerun.stderr
    histories = json.loads((out / "results.json").read_text())["histories"]
    assert len(histories) == 4 and all(h[-1]["step"] == 192 for h in histories.values())


def test_a_requested_stop_starts_no_member_and_reads_as_ctrl_c(tmp_path, monkeypatch):
    from reslab.analysis.experiments import _drive
    from reslab.train.interrupt import StopFlag
    from reslab.train.loop import RunResult

    settings = ExperimentSettings(out=tmp_path / "sc", jobs=2, **TINY)
    members = [Member(f"option{o}", o, 8, 0, {"model": "resnet", "model_options": {"depth": 8, "shortcut": o}})
               for o in "AB"]
    stop, running = StopFlag(), []
    stop.requested = True  # as the signal handler leaves it
    with pytest.raises(KeyboardInterrupt):
        _drive(settings, list(members), running, {m.name: _member_config(settings, m) for m in members}, [], stop)
    assert running == [] and not (tmp_path / "sc" / "members").exists()
    # One job at a time: a member that fit() reports interrupted (it saved) stops the experiment as Ctrl-C
    # does with several jobs, not as a failed member.
    monkeypatch.setattr(experiments, "fit", lambda config, quiet: RunResult(tmp_path, "interrupted", [], None, "x"))
    with pytest.raises(KeyboardInterrupt):
        run_members(ExperimentSettings(out=tmp_path / "one", **TINY), members[:1])


def test_failures_before_a_ctrl_c_are_still_reported(tmp_path, monkeypatch, capsys):
    settings = ExperimentSettings(out=tmp_path / "sc", jobs=2, **TINY)

    def fail_then_interrupt(settings, queue, running, configs, failures, stop):
        failures.append("optionB: error: out of memory")
        raise KeyboardInterrupt

    def fail_then_stop_requested(settings, queue, running, configs, failures, stop):
        failures.append("optionC: error: disk full")
        stop.requested = True  # Ctrl-C as the last member finished: _drive returns normally

    for drive, line in [(fail_then_interrupt, "optionB: error: out of memory"),
                        (fail_then_stop_requested, "optionC: error: disk full")]:
        monkeypatch.setattr(experiments, "_drive", drive)
        with pytest.raises(KeyboardInterrupt):
            experiments._run_parallel(settings, [], {})
        assert capsys.readouterr().err.strip() == f"members failed: {line}"

    def second_ctrl_c(running, quiet):  # pressed again while the members are being stopped
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "_drive", fail_then_interrupt)
    monkeypatch.setattr(experiments, "_stop_members", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        experiments._run_parallel(settings, [], {})
    assert capsys.readouterr().err.strip() == "members failed: optionB: error: out of memory"


def test_degradation_verdict_says_what_the_numbers_show():
    from reslab.analysis.experiments import _degradation_verdict

    def h(train_error):
        return [{"train_error": train_error, "eval_error": train_error}]

    paper_like = _degradation_verdict([20, 56], {"plain20": h(0.10), "plain56": h(0.15),
                                                 "resnet20": h(0.08), "resnet56": h(0.05)})
    assert "deeper is worse, the degradation" in paper_like and "deeper is no worse, as in the paper" in paper_like
    assert "10.00 points below the plain net's" in paper_like
    short = _degradation_verdict([20, 56], {"plain20": h(0.30), "plain56": h(0.25),
                                            "resnet20": h(0.20), "resnet56": h(0.40)})
    assert "deeper is NOT worse here" in short and "deeper is worse at this budget" in short
    assert "15.00 points above the plain net's, unlike the paper" in short


def test_budget_shortens_any_recipe(tmp_path):
    from reslab.analysis.experiments import _budget_note

    paper = ExperimentSettings(out=tmp_path, budget=0.5).overrides()
    assert paper["iterations"] == 32_000 and paper["epochs"] is None
    fast = ExperimentSettings(out=tmp_path, recipe="fast", budget=0.25)
    assert fast.overrides()["epochs"] == 10 and fast.overrides()["iterations"] is None
    assert "fast, 10 epochs (budget 0.25)" in _budget_note(fast)
    assert ExperimentSettings(out=tmp_path, recipe="fast", budget=0.0625).overrides()["epochs"] == 2.5
    # A length set explicitly wins over the budget, whichever way it is counted.
    assert ExperimentSettings(out=tmp_path, recipe="fast", budget=0.25, extra={"epochs": 3}).overrides()["epochs"] == 3
    explicit = ExperimentSettings(out=tmp_path, recipe="fast", budget=0.25, extra={"iterations": 500})
    assert "epochs" not in explicit.overrides() and "500 iterations" in _budget_note(explicit)
    by_epochs = ExperimentSettings(out=tmp_path, budget=0.5, extra={"epochs": 5})
    assert by_epochs.overrides()["iterations"] is None and "5 epochs" in _budget_note(by_epochs)
    with pytest.raises(ConfigError, match="unknown recipe"):
        ExperimentSettings(out=tmp_path, recipe="slow").overrides()
