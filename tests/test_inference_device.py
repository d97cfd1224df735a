"""evaluate, predict and explain on a chosen --device and --precision, in batches of --batch-size slices;
`run` across several machines: the torchrun command line it builds (no process is started)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import samora_kit.cli
import samora_kit.eval.evaluate
import samora_kit.flows.segment
from samora_kit.cli import main

from .synthetic import tiny_recipe, write_decathlon

CASES = ["case_000", "case_001", "case_002"]
# bf16 keeps 8 significant bits (a relative rounding of 2^-9 per operation): the logits move by well
# under 1 %, which flips the argmax only where two classes are nearly tied, at the edges of the
# masks. The tiny run differs on about 0.1 % of the voxels; 1 % leaves room for other CPUs' kernels,
# and is still well below its foreground (over 3 % of the voxels), so a bf16 path that loses the
# masks or shuffles the slices fails.
BF16_TOLERANCE = 0.01


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run trained long enough (8 epochs, a few seconds) that it paints foreground."""
    root = tmp_path_factory.mktemp("device")
    data = write_decathlon(root / "data", n_cases=3, shape=(24, 24, 8))
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(data, root / "done", CASES[:2], CASES[2:], epochs=8, warmup=0))
    with torch.random.fork_rng():
        assert main(["run", str(recipe), "eval.overlays=0"]) == 0
    return root / "done"


@pytest.fixture
def seen(monkeypatch) -> list[dict]:
    """What each forward pass of a model that load_run rebuilds sees: autocast, input device, batch size."""
    calls: list[dict] = []
    original = samora_kit.flows.segment.load_run

    def record(model, args):
        calls.append({"autocast": torch.is_autocast_enabled("cpu"), "dtype": torch.get_autocast_dtype("cpu"),
                      "device": args[0].device, "batch": args[0].shape[0],
                      "weights": next(model.parameters()).device})

    def load_run(run_dir, device=torch.device("cpu")):
        recipe, adapter, model = original(run_dir, device)
        model.backbone.register_forward_pre_hook(record)
        return recipe, adapter, model

    monkeypatch.setattr(samora_kit.flows.segment, "load_run", load_run)
    return calls


@pytest.fixture
def predictions(monkeypatch) -> list[np.ndarray]:
    """The label volumes evaluate scores, in order."""
    kept: list[np.ndarray] = []
    original = samora_kit.eval.evaluate.predict_volume

    def predict_volume(*args, **kwargs):
        kept.append(original(*args, **kwargs))
        return kept[-1]

    monkeypatch.setattr(samora_kit.eval.evaluate, "predict_volume", predict_volume)
    return kept


def _predict(capsys, finished: Path, out: Path, *flags) -> list[np.ndarray]:
    scans = [finished.parent / "data" / "imagesTr" / f"{case}.nii.gz" for case in CASES]
    code, _, err = _cli(capsys, "predict", finished, *scans, "--output", out, "--no-overlays", *flags)
    assert code == 0, err
    return [np.asanyarray(nib.load(out / f"{case}.nii.gz").dataobj) for case in CASES]


def _differ(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean(np.concatenate([(x != y).ravel() for x, y in zip(a, b)])))


@pytest.mark.slow
def test_predict_in_bf16_on_cpu_matches_fp32_but_for_near_ties(finished, tmp_path, capsys, seen):
    fp32 = _predict(capsys, finished, tmp_path / "fp32", "--device", "cpu")
    assert not any(call["autocast"] for call in seen)
    seen.clear()
    bf16 = _predict(capsys, finished, tmp_path / "bf16", "--device", "cpu", "--precision", "bf16")
    assert seen and all(call["autocast"] and call["dtype"] == torch.bfloat16 for call in seen)
    assert np.mean(np.concatenate([(x > 0).ravel() for x in fp32])) > 3 * BF16_TOLERANCE  # masks to lose
    assert _differ(fp32, bf16) <= BF16_TOLERANCE


@pytest.mark.slow
def test_evaluate_in_bf16_on_cpu_scores_the_same_labels_but_for_near_ties(finished, tmp_path, capsys, seen,
                                                                           predictions):
    code, _, err = _cli(capsys, "evaluate", finished, "--output", tmp_path / "fp32", "--device", "cpu")
    assert code == 0, err
    code, _, err = _cli(capsys, "evaluate", finished, "--output", tmp_path / "bf16", "--device", "cpu",
                        "--precision", "bf16")
    assert code == 0, err
    fp32, bf16 = predictions
    assert (fp32 > 0).mean() > 3 * BF16_TOLERANCE
    assert _differ([fp32], [bf16]) <= BF16_TOLERANCE
    assert [call["autocast"] for call in seen] == [False, True]  # one test volume of 8 slices, one batch each
    assert all(call["device"] == call["weights"] == torch.device("cpu") for call in seen)


@pytest.mark.slow
def test_batch_size_one_gives_the_labels_of_the_default_batches(finished, tmp_path, capsys, seen, predictions):
    default = _predict(capsys, finished, tmp_path / "default")
    assert [call["batch"] for call in seen] == [8, 8, 8]  # eval.batch_size 16 > 8 slices: a volume a batch
    seen.clear()
    one = _predict(capsys, finished, tmp_path / "one", "--batch-size", "1")
    assert [call["batch"] for call in seen] == [1] * 24
    assert all(np.array_equal(a, b) for a, b in zip(default, one))  # and so in the volume's slice order
    seen.clear()
    assert main(["evaluate", str(finished), "--output", str(tmp_path / "e3"), "--batch-size", "3"]) == 0
    assert main(["evaluate", str(finished), "--output", str(tmp_path / "e16")]) == 0
    assert [call["batch"] for call in seen] == [3, 3, 2, 8]
    assert np.array_equal(*predictions)


@pytest.mark.slow
def test_explain_runs_grad_cam_under_the_chosen_precision(finished, tmp_path, capsys, seen):
    from samora_kit.eval.explain import encoder_heatmap

    code, _, err = _cli(capsys, "explain", finished, "--case", "case_002", "--output", tmp_path / "x.png",
                        "--device", "cpu", "--precision", "bf16")
    assert code == 0, err
    assert (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")
    assert [(call["autocast"], call["dtype"], call["device"]) for call in seen] == \
        [(True, torch.bfloat16, torch.device("cpu"))]
    _, adapter, model = samora_kit.flows.segment.load_run(finished)
    image = adapter.load_case("case_002").image[4]
    fp32, bf16 = encoder_heatmap(model, image), encoder_heatmap(model, image, torch.bfloat16)
    assert fp32.shape == bf16.shape == image.shape and fp32.dtype == bf16.dtype == np.float32
    assert np.corrcoef(fp32.ravel(), bf16.ravel())[0, 1] > 0.99  # about 0.9999 here


def _unavailable_cuda() -> str:
    return f"cuda:{torch.cuda.device_count()}"  # cuda:0 on a machine without CUDA


@pytest.mark.parametrize("command", ["evaluate", "predict", "explain"])
@pytest.mark.parametrize("flags, words", [
    (["--device", _unavailable_cuda()], [f"--device {_unavailable_cuda()}:", "available: auto, cpu"]),
    (["--device", "gpu"], ["--device 'gpu': expected auto (cuda when available, else cpu), cpu, cuda or cuda:N"]),
    (["--device", "cpu", "--precision", "fp16"], ["--precision fp16: half precision runs on CUDA only",
                                                  "use bf16 or fp32 on the CPU"]),
    (["--precision", "fp8"], ["--precision 'fp8': expected one of fp32, bf16, fp16"]),
], ids=["missing-cuda", "unknown-device", "fp16-on-cpu", "unknown-precision"])
def test_a_device_or_precision_that_cannot_run_is_refused_before_loading(command, flags, words, tmp_path, capsys):
    run_dir = tmp_path / "not-even-a-run"  # the flags are checked first
    argv = {"evaluate": [run_dir], "predict": [run_dir, tmp_path / "scan.nii.gz", "--output", tmp_path / "p"],
            "explain": [run_dir, "--case", "case_000", "--output", tmp_path / "x.png"]}[command]
    code, out, err = _cli(capsys, command, *argv, *flags)
    assert code == 2, err
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_on_a_machine_without_it_names_the_flag_and_the_way_out(tmp_path, capsys):
    code, _, err = _cli(capsys, "evaluate", tmp_path, "--device", "cuda")
    assert code == 2
    assert "--device cuda: no CUDA device is available on this machine" in err and "available: auto, cpu" in err


def test_batch_size_below_one_is_refused(tmp_path, capsys):
    code, _, err = _cli(capsys, "evaluate", tmp_path, "--batch-size", "0")
    assert code == 2 and "--batch-size 0: at least 1 slice per forward pass" in err


# --- run on several machines: the torchrun command line -----------------------------------------

@pytest.fixture
def started(monkeypatch) -> list[list[str]]:
    """The commands `run` would start (none is started)."""
    commands: list[list[str]] = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(samora_kit.cli.subprocess, "call", lambda cmd: commands.append(cmd) or 0)
    return commands


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
CHILD = ["-m", "samora_kit.cli", "run", "r.toml"]


@pytest.mark.parametrize("flags, torchrun", [
    (["--nproc-per-node", "4"], ["--standalone", "--nproc-per-node=4"]),
    (["--nnodes", "2", "--nproc-per-node", "4", "--rdzv-endpoint", "node0.cluster:29400"],
     ["--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=node0.cluster:29400"]),
    (["--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "4", "--master-addr", "10.0.0.1",
      "--master-port", "29501"],
     ["--nnodes=2", "--node-rank=1", "--nproc-per-node=4", "--master-addr=10.0.0.1", "--master-port=29501"]),
    (["--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1"],
     ["--nnodes=2", "--node-rank=0", "--nproc-per-node=1", "--master-addr=10.0.0.1"]),
], ids=["one-node", "c10d-rendezvous", "static-master", "one-process-a-node"])
def test_run_builds_the_torchrun_command_line(flags, torchrun, started, capsys):
    assert main(["run", "r.toml", *flags]) == 0, capsys.readouterr().err
    assert started == [[*TORCHRUN, *torchrun, *CHILD]]


def test_the_processes_get_the_overrides_resume_and_debug(started, capsys):
    assert main(["--debug", "run", "r.toml", "train.lr=0.001", "--nnodes", "2", "--rdzv-endpoint", "n0:29400",
                 "--resume", "train.epochs=3"]) == 0
    assert started[0][-7:] == ["samora_kit.cli", "--debug", "run", "r.toml", "train.lr=0.001", "train.epochs=3",
                               "--resume"]


def test_one_process_on_one_machine_starts_no_torchrun(started, monkeypatch):
    ran = []
    monkeypatch.setattr("samora_kit.runner.run", lambda *args: ran.append(args))
    assert main(["run", "r.toml", "--nproc-per-node", "1", "--nnodes", "1"]) == 0
    assert started == [] and len(ran) == 1


@pytest.mark.parametrize("flags, words", [
    (["--nnodes", "2"], ["--nnodes 2: the nodes need a place to meet; add --rdzv-endpoint HOST:PORT"]),
    (["--nnodes", "0"], ["--nnodes 0: at least 1 node"]),
    (["--nnodes", "2", "--rdzv-endpoint", "n0:29400", "--master-addr", "n0"],
     ["--rdzv-endpoint and --master-addr are two ways for the nodes to meet; give one"]),
    (["--nnodes", "2", "--rdzv-endpoint", "n0:29400", "--node-rank", "1"],
     ["--node-rank: the c10d rendezvous at --rdzv-endpoint numbers the nodes itself"]),
    (["--nnodes", "2", "--master-addr", "n0"], ["give this node's --node-rank, from 0 (on n0) to 1"]),
    (["--nnodes", "2", "--master-addr", "n0", "--node-rank", "2"], ["--node-rank 2: with --nnodes 2 it is from 0 to 1"]),
    (["--nnodes", "2", "--node-rank", "1"], ["the nodes need a place to meet"]),
    (["--node-rank", "0"], ["--node-rank goes with --master-addr"]),
    (["--master-port", "29500"], ["--master-port goes with --master-addr"]),
    (["--master-addr", "n0", "--master-port", "70000"], ["--master-port 70000: expected a port from 1 to 65535"]),
    (["--nnodes", "2", "--rdzv-endpoint", " "], ["--rdzv-endpoint is empty; expected HOST:PORT"]),
])
def test_a_layout_torchrun_cannot_start_is_refused(flags, words, started, capsys):
    code, _, err = _cli(capsys, "run", "r.toml", *flags)
    assert code == 2 and started == []
    for word in words:
        assert word in err, (word, err)
