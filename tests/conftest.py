"""Shared test helpers: seeded BN randomisation (default 0/1 statistics would hide growth bugs)."""

from __future__ import annotations

import pytest
import torch

from evo.graph.archgraph import ArchGraph

# Tests run small tensors; one intra-op thread avoids OpenMP spin-waiting when Ray workers or other
# processes share the 2 cores (a forward was seen 30x slower with 2 threads under load).
torch.set_num_threads(1)


def randomize_bn(graph: ArchGraph, seed: int = 0) -> ArchGraph:
    """A copy whose batch-norm affine params and running statistics are random but well-conditioned."""
    gen = torch.Generator().manual_seed(seed)
    out = graph.copy()
    for n in out.nodes():
        if out.op(n) in ("batchnorm2d", "batchnorm1d"):
            c = out.attrs(n)["num_features"]
            out.set_params(
                n,
                weight=0.5 + torch.rand(c, generator=gen),
                bias=0.2 * torch.randn(c, generator=gen),
                running_mean=0.2 * torch.randn(c, generator=gen),
                running_var=0.5 + torch.rand(c, generator=gen),
            )
    return out


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session (starting one takes 7-10 s)."""
    import ray

    from evo.search.cluster import connect

    info = connect(num_cpus=2)
    yield info
    ray.shutdown()
