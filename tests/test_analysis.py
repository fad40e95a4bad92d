"""The paper's evidence, mechanics only: tiny depths, few steps, tiny data."""

import importlib.util
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
from reslab.analysis import members as runner
from reslab.analysis.deepen import deepen, max_output_difference
from reslab.analysis.claims import mean_response
from reslab.analysis.experiments import degradation, shortcuts, table6
from reslab.analysis.members import ExperimentSettings, Member, member_config, run_members
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


def test_a_bottleneck_resnet_is_deepened_with_bottlenecks():
    model = trained_resnet("resnet", depth=11, block="bottleneck")
    result = deepen(model, add=3)
    added = [b for stage in result.model.stages for b in list(stage.blocks)[1:]]
    assert len(added) == 3 and all(hasattr(b, "conv3") for b in added)  # bottlenecks, not basic blocks
    assert result.spec.depth == 20 and result.spec.name == "resnet20-from-resnet11-bottleneck"
    batches = [(torch.randn(8, 3, 16, 16), None) for _ in range(2)]
    assert max_output_difference(model, result.model, batches, train_mode=False) <= 1e-6
    assert max_output_difference(model, result.model, batches, train_mode=True) <= 1e-6


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


def test_a_response_after_bn_is_what_its_scale_and_shift_make_of_normalised_input():
    torch.manual_seed(1)
    model = reslab.create_model("resnet", depth=8)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for i, bn in enumerate(bns):  # scales and shifts far from their initial 1 and 0, different per layer
            bn.weight.uniform_(0.2, 2.5).mul_(0.5 + 0.3 * i)
            bn.bias.normal_(0.0, 0.7)
    x = torch.randn(64, 3, 16, 16)
    for bn in bns:  # running statistics exactly this batch's, so eval mode normalises it exactly
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    measured = layer_responses(model, [(x, None)])
    assert all(r.bn_scale is not None for r in measured)
    for r in measured:
        assert r.std == pytest.approx(r.bn_scale, rel=2e-3), r.name
    assert max(r.std for r in measured) / min(r.std for r in measured) > 2  # the layers really differ
    # Read back from an experiment member's responses.json, written before the field existed:
    from reslab.analysis.responses import LayerResponse
    assert LayerResponse(**{"index": 1, "name": "stem.bn", "std": 0.9}).bn_scale is None


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
    out = tmp_path / "deg"
    settings = ExperimentSettings(out=out, **TINY)
    report = degradation(settings, [8, 14])
    text = report.read_text()
    for name in ("degradation-figure6.png", "degradation-figure1.png", "degradation-responses.png",
                 "degradation.md", "degradation.json"):
        assert (out / name).exists(), name
    assert "REDUCED BUDGET" in text and "NOT FINISHED" not in text
    assert re.search(r"\|\s+8 \|", text) and re.search(r"\|\s+14 \|", text)
    assert "Fig. 1: plain-14's training error is above plain-8's at" in text
    results = json.loads((out / "degradation.json").read_text())
    names = {"plain8-seed0", "plain14-seed0", "resnet8-seed0", "resnet14-seed0"}
    assert set(results["histories"]) == names and results["missing"] == []
    assert all(h[-1]["step"] == 32 for h in results["histories"].values())  # 0.0005 * 64k
    # Fig. 7 from each member's final weights, kept as metrics: 7 and 13 3x3 layers.
    responses = {n: json.loads((out / "members" / n / "responses.json").read_text()) for n in names}
    assert len(responses["resnet8-seed0"]) == 7 and len(responses["plain14-seed0"]) == 13
    # Identical data order: same seed, same recipe in every member.
    configs = [yaml.safe_load((out / "members" / m / "config.yaml").read_text())
               for m in ("plain8-seed0", "resnet8-seed0")]
    assert configs[0]["seed"] == configs[1]["seed"] and configs[0]["iterations"] == configs[1]["iterations"]
    # Rerunning skips finished members; so does another experiment given the same folder.
    before = (out / "members" / "plain8-seed0" / "last.pt").stat().st_mtime_ns
    degradation(settings, [8, 14])
    assert (out / "members" / "plain8-seed0" / "last.pt").stat().st_mtime_ns == before
    text = table6(settings, [8, 14], seeds=1).read_text()
    assert "ResNet-8" in text and "(n=1)" in text and len(list((out / "members").iterdir())) == 4
    assert "The expected order of validation error (ResNet-8 > ResNet-14)" in text
    # Fig. 7 by depth: each row carries its member's mean response, and the report compares them.
    row = next(line for line in text.splitlines() if line.startswith("| ResNet-14"))
    assert f"{mean_response(responses['resnet14-seed0']):.2f} (n=1)" in row
    assert "Fig. 7: The expected order of layer response (deeper ResNets smaller) (ResNet-8 > ResNet-14)" in text
    # Table 6 drawn (error by depth, every seed) and Fig. 7's layout for its depths, both in the report.
    for figure in ("table6-errors.png", "table6-responses.png"):
        assert (out / figure).stat().st_size > 0 and f"![{figure}]({figure})" in text


def test_a_report_is_rebuilt_from_committed_metrics_alone(tmp_path):
    """What docs/evidence commits (no checkpoints) is enough to rebuild a report and to finish an
    experiment in another session; a folder started under other settings is refused, not mixed."""
    import shutil

    out = tmp_path / "exp"
    table6(ExperimentSettings(out=out, **TINY), [8], seeds=2)
    first = json.loads((out / "table6.json").read_text())
    # The report says how the members computed: here the suite's float32, on this CPU's instruction set.
    capability = torch.backends.cpu.get_cpu_capability()
    assert json.loads((out / "members" / "resnet8-seed0" / "run.json").read_text())["cpu_capability"] == capability
    assert f"Arithmetic: every member (2) trained in float32 on cpu ({capability})." in (out / "table6.md").read_text()
    # Whichever experiment trains a member records its Fig. 7 responses, for the degradation report to share.
    assert all((out / "members" / f"resnet8-seed{s}" / "responses.json").exists() for s in (0, 1))
    committed = tmp_path / "committed"
    shutil.copytree(out, committed, ignore=shutil.ignore_patterns("*.pt", ".lock", "stderr.log"))
    shutil.rmtree(committed / "members" / "resnet8-seed1")  # a member the last session did not finish
    partial = table6(ExperimentSettings(out=committed, train=False, **TINY), [8], seeds=2).read_text()
    assert "NOT FINISHED (1 of 2 members): resnet8-seed1" in partial
    finished = table6(ExperimentSettings(out=committed, **TINY), [8], seeds=2).read_text()
    assert "(n=2)" in finished and "NOT FINISHED" not in finished
    assert not (committed / "members" / "resnet8-seed0" / "last.pt").exists()  # it was not trained again
    # CPU training is deterministic: the member trained again equals the one trained the first time.
    assert json.loads((committed / "table6.json").read_text())["rows"] == first["rows"]
    with pytest.raises(ConfigError, match=r"resnet8-seed0 was trained with other settings \(iterations 32 then, 64 "):
        table6(ExperimentSettings(out=committed, **{**TINY, "budget": 0.001}), [8], seeds=2)
    # The arithmetic is how a member ran, as the device is: a CPU with native bf16 may finish the experiment.
    bf16 = ExperimentSettings(out=committed, **{**TINY, "extra": {**TINY["extra"], "cpu_bf16": True}})
    assert "(n=2)" in table6(bf16, [8], seeds=2).read_text()
    shutil.rmtree(committed / "members" / "resnet8-seed1")
    mixed = table6(bf16, [8], seeds=2).read_text()  # and the report says that they differ, member by member
    assert (f"Arithmetic DIFFERS between members (as each member's run.json records): float32 on cpu ({capability}): "
            f"resnet8-seed0; bf16 autocast on cpu ({capability}): resnet8-seed1.") in mixed
    (committed / "members" / "resnet8-seed1" / "run.json").unlink()  # a member from before run.json existed
    assert f"float32 on cpu ({capability}): resnet8-seed0; not recorded: resnet8-seed1." in table6(
        bf16, [8], seeds=2).read_text()
    for corrupt in ("null", "[1]", "{not json", '{"device": "mps:0"}'):  # the last trained without autocast
        (committed / "members" / "resnet8-seed1" / "run.json").write_text(corrupt)
        said = "float32 on mps" if "mps" in corrupt else "not recorded"
        assert f"; {said}: resnet8-seed1." in table6(bf16, [8], seeds=2).read_text()
    # Experiments pointed at one folder share members: table6's ResNet-8 seed 0 is the shortcuts' option A.
    before = (out / "members" / "resnet8-seed0" / "metrics.jsonl").stat().st_mtime_ns
    text = shortcuts(ExperimentSettings(out=out, **TINY), depth=8).read_text()
    assert (out / "members" / "resnet8-seed0" / "metrics.jsonl").stat().st_mtime_ns == before
    assert "A (zero-padding identity)" in text and "C (projection everywhere)" in text and "plain" in text
    assert "Option B:" in text and "A/B/C (the paper's ImageNet order" in text and (out / "shortcuts.png").exists()
    assert {p.name for p in (out / "members").iterdir()} == {"resnet8-seed0", "resnet8-seed1", "resnet8B-seed0",
                                                             "resnet8C-seed0", "plain8-seed0"}


def test_interrupted_member_is_resumed(tmp_path):
    settings = ExperimentSettings(out=tmp_path / "sc", **TINY)
    member = Member("optionA", "A", 8, 0, {"model": "resnet", "model_options": {"depth": 8, "shortcut": "A"}})
    stopped = fit(member_config(settings, member), quiet=True, should_stop=lambda s: s == 10)
    assert stopped.status == "interrupted"
    histories = run_members(settings, [member])
    assert histories["optionA"][-1]["step"] == 32


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
    assert lines[0] == "model,layer,name,std,bn_scale" and all(float(line.split(",")[4]) > 0 for line in lines[1:])
    assert "BN scales alone" in result.stdout


def test_parallel_members_finish_and_a_failing_member_is_named(tmp_path):
    settings = ExperimentSettings(out=tmp_path / "par", jobs=2, **TINY)
    members = [Member("resnet8", "resnet", 8, 0, {"model": "resnet", "model_options": {"depth": 8}})]
    started = []
    real_popen = runner.subprocess.Popen

    def recording_popen(command, **kw):
        started.append(Path(command[command.index("--config") + 1]).parent.name)
        return real_popen(command, **kw)

    # A member whose training fails (its data folder is gone) is reported by name with its error line,
    # after the healthy members beside it have finished. (A network that cannot be built is refused
    # before any member starts: below.)
    members += [Member("resnet20", "resnet", 20, 0, {"model": "resnet", "model_options": {"depth": 20}}),
                Member("broken", "resnet", 14, 0, {"model": "resnet", "model_options": {"depth": 14},
                                                   "data": str(tmp_path / "gone")})]
    runner.subprocess.Popen = recording_popen
    try:
        with pytest.raises(ConfigError, match=r"members failed: broken: .*gone: no such dataset or folder"):
            run_members(settings, members)
    finally:
        runner.subprocess.Popen = real_popen
    assert started == ["resnet20", "broken", "resnet8"]  # deepest first; the shallow one fills the freed slot
    for name in ("resnet8", "resnet20"):
        summary = json.loads((tmp_path / "par" / "members" / name / "summary.json").read_text())
        assert summary["steps"] == 32, name
    unbuildable = Member("resnet9", "resnet", 9, 0, {"model": "resnet", "model_options": {"depth": 9}})
    with pytest.raises(SpecError, match=r"6n\+2"):
        run_members(ExperimentSettings(out=tmp_path / "none", jobs=2, **TINY), [members[0], unbuildable])
    assert not (tmp_path / "none").exists()  # nothing started


def test_ctrl_c_stops_parallel_members_with_checkpoints_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "int"
    command = [sys.executable, "-m", "reslab", "experiment", "shortcuts", "--depth", "8", "--data", "digits",
               "--budget", "0.006", "--jobs", "2", "--set", "batch_size=64", "--set", "eval_every=1000",
               "--out", str(out), "--quiet"]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    members = out / "members"
    # Stop once both first members have logged an epoch (of 6): they are training, not starting up or
    # already finished. A fixed wait after run.json was too long on a fast CI machine (stop 33): both had
    # finished their 3 epochs and the next two were still starting, so none had a checkpoint to keep.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(members.glob("*/metrics.jsonl"))) < 2:
        time.sleep(0.02)
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
    histories = json.loads((out / "shortcuts.json").read_text())["histories"]
    assert len(histories) == 4 and all(h[-1]["step"] == 384 for h in histories.values())


def test_a_requested_stop_starts_no_member_and_reads_as_ctrl_c(tmp_path, monkeypatch):
    from reslab.analysis.members import _drive
    from reslab.train.interrupt import StopFlag
    from reslab.train.loop import RunResult

    settings = ExperimentSettings(out=tmp_path / "sc", jobs=2, **TINY)
    members = [Member(f"option{o}", o, 8, 0, {"model": "resnet", "model_options": {"depth": 8, "shortcut": o}})
               for o in "AB"]
    stop, running = StopFlag(), []
    stop.requested = True  # as the signal handler leaves it
    with pytest.raises(KeyboardInterrupt):
        _drive(settings, list(members), running, {m.name: member_config(settings, m) for m in members}, [], stop)
    assert running == [] and not (tmp_path / "sc" / "members").exists()
    # One job at a time: a member that fit() reports interrupted (it saved) stops the experiment as Ctrl-C
    # does with several jobs, not as a failed member.
    monkeypatch.setattr(runner, "fit", lambda config, quiet: RunResult(tmp_path, "interrupted", [], None, "x"))
    with pytest.raises(KeyboardInterrupt):
        run_members(ExperimentSettings(out=tmp_path / "one", **TINY), members[:1])


def test_failures_before_a_ctrl_c_are_still_reported(tmp_path, monkeypatch, capsys):
    settings = ExperimentSettings(out=tmp_path / "sc", jobs=2, **TINY)

    def fail_then_interrupt(settings, queue, running, configs, failures, stop, on_done):
        failures.append("optionB: error: out of memory")
        raise KeyboardInterrupt

    def fail_then_stop_requested(settings, queue, running, configs, failures, stop, on_done):
        failures.append("optionC: error: disk full")
        stop.requested = True  # Ctrl-C as the last member finished: _drive returns normally

    for drive, line in [(fail_then_interrupt, "optionB: error: out of memory"),
                        (fail_then_stop_requested, "optionC: error: disk full")]:
        monkeypatch.setattr(runner, "_drive", drive)
        with pytest.raises(KeyboardInterrupt):
            runner._run_parallel(settings, [], {})
        assert capsys.readouterr().err.strip() == f"members failed: {line}"

    def second_ctrl_c(running, quiet):  # pressed again while the members are being stopped
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_drive", fail_then_interrupt)
    monkeypatch.setattr(runner, "_stop_members", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        runner._run_parallel(settings, [], {})
    assert capsys.readouterr().err.strip() == "members failed: optionB: error: out of memory"


def test_claims_say_what_the_numbers_show():
    from reslab.analysis.claims import Spread, above_throughout, decreasing

    def h(*errors):
        return [{"epoch": i + 1, "train_error": e, "eval_error": e} for i, e in enumerate(errors)]

    assert above_throughout([h(0.9, 0.5, 0.3)], [h(0.8, 0.4, 0.2)], "train_error") == (3, 3)
    assert above_throughout([h(0.9, 0.5), h(0.7, 0.6)], [h(0.8, 0.6), h(0.6, 0.5)], "eval_error") == (3, 4)
    clear = decreasing({"R20": Spread((0.10, 0.11)), "R56": Spread((0.07, 0.08))})
    assert clear.holds and not clear.unclear and "each step is larger than the spread" in clear.sentence()
    close = decreasing({"R20": Spread((0.10, 0.12)), "R32": Spread((0.105, 0.11)), "R56": Spread((0.07, 0.08))})
    assert close.holds and close.unclear == (("R20", "R32"),) and "within the spread" in close.sentence()
    wrong = decreasing({"R20": Spread((0.10, 0.11)), "R56": Spread((0.20, 0.21))})
    assert not wrong.holds and "R20 vs R56 reversed by more than the spread" in wrong.sentence()
    # One seed against one seed has no spread: such a step is named as unjudged, held or broken.
    single = decreasing({"R20": Spread((0.16, 0.17)), "R32": Spread((0.155,)), "R44": Spread((0.152,)),
                         "R56": Spread((0.14, 0.15))})
    assert single.holds and single.unjudged == (("R32", "R44"),) and single.unclear == (("R44", "R56"),)
    assert "no spread to judge them by: R32 vs R44." in single.sentence()
    one_each = decreasing({"R20": Spread((0.10,)), "R56": Spread((0.20,))})
    assert "R20 vs R56 reversed (one seed each: no spread to judge by)." in one_each.sentence()
    # A broken step within the spread is said to be so; a clean step is not named.
    mixed = decreasing({"A": Spread((0.20, 0.22)), "B": Spread((0.21, 0.22)), "C": Spread((0.15, 0.16))})
    assert mixed.reversed == (("A", "B"),) and "A vs B within the spread" in mixed.sentence()
    assert "B vs C" not in mixed.sentence()
    assert Spread((0.1, 0.2)).text() == "15.00 +- 7.07 (n=2)" and Spread(()).text() == ""


def test_protocol_sets_recipe_budget_and_seeds(tmp_path):
    result = cli("experiment", "table6", "--protocol", "short", "--budget", "0.5", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "--protocol sets the recipe and budget" in result.stderr
    assert not (tmp_path / "x").exists()
    from reslab.analysis.protocols import PROTOCOLS

    short = PROTOCOLS["short"]
    assert short.recipe == "fast" and short.seeds_for("table6") >= 3 and short.seeds_for("degradation") >= 2
    settings = ExperimentSettings(out=tmp_path, recipe=short.recipe, budget=short.budget, protocol="short")
    member = Member("r", "resnet", 20, 0, {"model": "resnet20"})
    assert member_config(settings, member).schedule == "onecycle"
    # The fast recipe exempts BN from weight decay; the short protocol decays it, as the paper did (Fig. 7
    # measures the BN scales), and a --set still wins over the protocol.
    assert member_config(settings, member).no_decay_bn_bias is False
    assert member_config(ExperimentSettings(out=tmp_path, recipe="fast"), member).no_decay_bn_bias is True
    mine = ExperimentSettings(out=tmp_path, recipe="fast", protocol="short", extra={"no_decay_bn_bias": True})
    assert member_config(mine, member).no_decay_bn_bias is True
    from reslab.analysis.experiments import _budget_note

    assert "Set for every member: no_decay_bn_bias=True." in _budget_note(mine)  # the report says so
    assert "Set for every member" not in _budget_note(settings)
    assert _budget_note(settings).startswith("Protocol: short (the fast recipe")
    # Every protocol can be named on the command line (argparse accepts it: the protocol's own check answers),
    # and medium is short made 2.5x longer.
    for name in PROTOCOLS:
        named = cli("experiment", "table6", "--protocol", name, "--recipe", "fast", "--out", str(tmp_path / "y"))
        assert named.returncode == 2 and "--protocol sets the recipe and budget" in named.stderr, name
    medium = PROTOCOLS["medium"]
    longer = member_config(ExperimentSettings(out=tmp_path, recipe="fast", budget=medium.budget, protocol="medium"),
                           member)
    assert (longer.epochs, longer.no_decay_bn_bias) == (10, False) and medium.seeds == short.seeds


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


def test_the_gpu_evidence_script_runs_end_to_end_on_the_cpu(tmp_path):
    """scripts/paper_evidence_gpu.py at a tiny budget: three experiments in one folder, members shared
    and trained two at a time (on a GPU: the full protocol, several members sharing the device)."""
    out = tmp_path / "evidence"
    script = Path(__file__).resolve().parents[1] / "scripts" / "paper_evidence_gpu.py"
    result = subprocess.run([sys.executable, str(script), "--smoke", "--jobs", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("table6", "degradation", "shortcuts"):
        report = (out / f"{name}.md").read_text()
        assert "NOT FINISHED" not in report, name
    assert sorted(p.name for p in (out / "members").iterdir()) == [
        "plain14-seed0", "plain8-seed0", "resnet14-seed0", "resnet8-seed0", "resnet8B-seed0", "resnet8C-seed0"]
    assert json.loads((out / "members" / "resnet8-seed0" / "run.json").read_text())["device"] == "cpu"


def test_the_gpu_evidence_script_stops_its_members_on_one_sigint_and_a_rerun_finishes(tmp_path):
    """A SIGINT sent to the script alone (``timeout -s INT``, the end of a lent GPU's time) reaches the
    experiment once: every member saves a checkpoint, the script exits 130, and no member is left
    running (the rerun would find its run locked). The rerun resumes both and writes the report."""
    out = tmp_path / "evidence"
    script = Path(__file__).resolve().parents[1] / "scripts" / "paper_evidence_gpu.py"
    command = [sys.executable, str(script), "--smoke", "--jobs", "2", "--budget", "0.02", "--depths", "8",
               "--seeds", "2", "--experiments", "table6", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    members = [out / "members" / f"resnet8-seed{s}" for s in (0, 1)]
    deadline = time.monotonic() + 120
    while not all((m / "run.json").exists() for m in members) and proc.poll() is None:
        assert time.monotonic() < deadline, "the members never started"
        time.sleep(0.2)
    time.sleep(1.0)  # into their first steps
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert all((m / "last.pt").exists() and not (m / "summary.json").exists() for m in members)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = (out / "table6.md").read_text()
    assert "NOT FINISHED" not in report and "(n=2)" in report and "budget 0.02" in report
    assert "--experiments" in subprocess.run([sys.executable, str(script), "--experiments", "fig9"],
                                             capture_output=True, text=True).stderr
    zero = subprocess.run([*command[:2], "--smoke", "--budget", "0", "--out", str(tmp_path / "zero")],
                          capture_output=True, text=True)
    assert zero.returncode == 2 and "--budget must be in (0, 1], got 0.0" in zero.stderr  # not read as "not given"


def test_the_gpu_evidence_script_runs_a_named_protocol_or_a_recipe_cut_to_a_budget():
    """The GPU script passes --protocol medium through (a GPU lent for minutes runs the CPU evidence
    protocol), runs full unless told, and refuses a protocol together with a recipe or budget."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "paper_evidence_gpu.py"
    spec = importlib.util.spec_from_file_location("paper_evidence_gpu", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.length_arguments(None, None, None) == ["--protocol", "full"]
    assert module.length_arguments("medium", None, None) == ["--protocol", "medium"]
    assert module.length_arguments(None, "fast", 0.5) == ["--recipe", "fast", "--budget", "0.5"]
    assert module.length_arguments(None, None, 0.1) == ["--recipe", "paper", "--budget", "0.1"]
    for extra in (["--recipe", "fast"], ["--budget", "0.5"], ["--smoke"]):
        refused = subprocess.run([sys.executable, str(script), "--protocol", "medium", *extra],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "--protocol" in refused.stderr.splitlines()[-1], extra


def test_parallel_members_share_the_cores_this_process_may_use(tmp_path, monkeypatch):
    """In a container limited to 4 of a 64-core host's cores, two members get 2 threads each, not 32."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    settings = ExperimentSettings(out=tmp_path, jobs=2, **TINY)
    assert member_config(settings, Member("resnet8-seed0", "resnet", 8, 0, {})).threads == 2
