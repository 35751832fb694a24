"""Devices: a Learner computes where it is told; the CPU path is exercised by passing device="cpu"
explicitly (no GPU in CI); the CUDA comparison runs only where a GPU exists (`-m gpu`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import evo.zoo
from evo.errors import ConfigError
from evo.learn import CostMeter, Learner
from evo.learn.device import amp_dtype, autocast, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("device, match", [("tpu", "cpu"), ("cuda:99" if torch.cuda.is_available() else "cuda",
                                                             "CUDA"), (3.5, "device")])
def test_unusable_devices_are_refused_by_name(device, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Learner(evo.zoo.load("small_cnn"), device=device)


def test_cpu_needs_no_autocast() -> None:
    cpu = resolve_device("cpu")
    assert amp_dtype(cpu) is None
    with autocast(cpu):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    assert CostMeter(cpu).device.type == "cpu"


def test_the_gpu_check_round_runs_on_an_explicit_device_and_is_reproducible() -> None:
    """The benchmark's round with device="cpu" on both sides: every check holds, and results are
    exactly equal (training seeds its dropout; nothing depends on where a tensor was created)."""
    out = gpu_check().compare(("cpu", "cpu"), model="small_cnn", input_size=16, source="digits",
                              per_class_train=12, per_class_test=6)
    a, b = out["runs"]
    assert out["ok"] and out["fast_agreement"] == 1.0
    assert a["round_accuracy"] == b["round_accuracy"] and a["round_flops"] == b["round_flops"] > 0
    assert a["peak_mem_bytes"] > 0


@pytest.mark.gpu
def test_cuda_round_matches_the_cpu_within_tolerance() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = gpu_check().compare(("cpu", "cuda"), model="efficientnet_lite0", input_size=64,
                              per_class_train=50, per_class_test=30)
    assert out["ok"], out["checks"]
    cuda = out["runs"][1]
    assert cuda["peak_mem_bytes"] > 0  # read from the CUDA allocator, not the process RSS
    learner = Learner(evo.zoo.load("small_cnn"), device="cuda", progress=False)
    assert learner.device.type == "cuda"
    assert np.isfinite(out["round_speedup"])


def test_the_worker_runs_on_the_cpu_unless_ray_assigned_a_gpu() -> None:
    from evo.search.worker import make_learner, task_device

    assert task_device({}) == "cpu"  # no Ray GPU assignment in this process
    assert task_device({"device": "cpu"}) == "cpu"
    graph = evo.zoo.load("small_cnn")
    learner, fresh = make_learner(graph, {}, {}, 50, {"strategy": "evo", "epochs": 1}, device="cpu")
    assert fresh and learner.device == torch.device("cpu")


def test_cpu_feature_passes_run_in_cache_sized_batches_with_the_same_outputs(monkeypatch) -> None:
    """Forward-only passes on the CPU ran at the caller's batch (256): Lite0 at 128 px held 1.6 MiB of
    activation per image, 400 MiB a batch, and ran 2.3x slower than at 8 (BENCHMARKS.md). The batch is
    now sized by the net's largest activation; eval-mode outputs do not depend on it."""
    import evo.learn.device as dev
    from evo.data.transforms import Preprocess
    from evo.learn.train import run_batches

    g = evo.zoo.resolve("efficientnet_lite0", 128)
    net = g.to_module().eval()
    assert 1.2 * 2**20 < net.activation_bytes < 2 * 2**20  # 96 channels x 64 x 64 floats
    cpu = torch.device("cpu")
    assert dev.feature_batch(net, 256, cpu) == 8 and dev.feature_batch(net, 4, cpu) == 4
    small = evo.zoo.resolve("small_cnn").to_module()
    assert dev.feature_batch(small, 256, cpu) == 256  # small activations: the caller's batch
    assert dev.feature_batch(torch.nn.Linear(2, 2), 256, cpu) == 256  # unknown activations: unchanged
    if torch.cuda.is_available():
        assert dev.feature_batch(net, 256, torch.device("cuda")) == 256

    seen = []
    fn = lambda m, x: seen.append(len(x)) or m.forward_features(x)  # noqa: E731
    images = np.random.default_rng(0).integers(0, 256, (20, 40, 40, 3), dtype=np.uint8)
    pre = Preprocess.imagenet(128)
    split = run_batches(net, images, pre, fn, batch_size=256, progress=False)
    assert seen == [8, 8, 4]
    monkeypatch.setattr(dev, "CPU_CACHE_BYTES", 0)  # off: the caller's batch, as before
    seen.clear()
    whole = run_batches(net, images, pre, fn, batch_size=256, progress=False)
    assert seen == [20]
    assert torch.allclose(split, whole, rtol=1e-5, atol=1e-5 * float(whole.abs().max()))
    monkeypatch.setattr(dev, "CPU_CACHE_BYTES", None)  # from the environment
    monkeypatch.setenv("EVO_CPU_CACHE_BYTES", str(4 * 2**20))
    assert dev.feature_batch(net, 256, cpu) == 2
    monkeypatch.setenv("EVO_CPU_CACHE_BYTES", "lots")
    with pytest.raises(ConfigError, match="EVO_CPU_CACHE_BYTES"):
        dev.feature_batch(net, 256, cpu)
