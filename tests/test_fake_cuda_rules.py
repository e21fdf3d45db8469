"""The fake CUDA layer's stream rules: each refuses a wrong program the real CUDA would refuse or race on."""

import pytest
import torch

from dip_export.runtime.cuda_graph import GraphedSampler
from dip_export.runtime.torch_engine import TorchEngine
from dip_export.sampling import SamplerSettings, initial_noise
from tests.fakes.cuda import FakeCuda, FakeStream


@pytest.fixture()
def gpu(monkeypatch):
    return FakeCuda().install(monkeypatch)


def test_cpu_copies_are_refused_during_a_capture(gpu):
    graph, buf = torch.cuda.CUDAGraph(), torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"capturing \(\.cpu\(\)\)"), torch.cuda.graph(graph):
        buf.add_(1.0).cpu()
    with pytest.raises(RuntimeError, match="capturing"), torch.cuda.graph(graph), torch.cuda.stream(torch.cuda.Stream()):
        buf.cpu()  # global capture mode: refused from any stream
    assert buf.cpu().sum() == 0  # outside a capture: a copy


def test_work_on_a_side_stream_is_used_only_after_wait_stream(gpu):
    buf, side = torch.zeros(3), torch.cuda.Stream()
    with torch.cuda.stream(side):
        buf.add_(1.0)
    with pytest.raises(RuntimeError, match="without waiting for it"), torch.cuda.device(0):
        buf.mul_(2.0)  # the current stream reads what the side stream wrote: a race
    with pytest.raises(RuntimeError, match="without waiting for it"):
        buf.cpu()  # the host copy waits for the current stream only
    third = torch.cuda.Stream()
    torch.cuda.current_stream().wait_stream(side)
    third.wait_stream(torch.cuda.current_stream())  # waits are transitive
    with torch.cuda.stream(third):
        buf.mul_(2.0)
    with pytest.raises(RuntimeError, match="without waiting for it"), torch.cuda.device(0):
        buf.add_(1.0)
    torch.cuda.synchronize()  # the host waited for every stream
    with torch.cuda.device(0):
        buf.add_(1.0)
    assert buf.tolist() == [3.0, 3.0, 3.0]  # the refused ops did not run


def test_capture_records_the_capturing_stream_and_the_streams_that_joined_it(gpu):
    graph, captured, eager = torch.cuda.CUDAGraph(), torch.zeros(2), torch.zeros(2)
    capture = torch.cuda.Stream()
    with torch.cuda.graph(graph, stream=capture):
        captured.add_(1.0)
        with torch.cuda.stream(torch.cuda.Stream()):
            eager.add_(1.0)  # another stream: runs now, not part of the graph
        fork = torch.cuda.Stream()
        fork.wait_stream(capture)  # joins the capture
        with torch.cuda.stream(fork):
            captured.mul_(3.0)
        capture.wait_stream(fork)  # and is joined back
    assert captured.tolist() == [0.0, 0.0] and eager.tolist() == [1.0, 1.0]
    graph.replay()
    assert captured.tolist() == [3.0, 3.0]
    with pytest.raises(RuntimeError, match="unjoined"), torch.cuda.graph(torch.cuda.CUDAGraph(), stream=capture):
        FakeStream().wait_stream(capture)  # forked and never joined back


def test_a_capture_without_its_stream_waits_is_refused(golden_model, golden, gpu, monkeypatch):
    """The graphed sampler's warm-up runs on a side stream: without the waits its buffers race."""
    noise, y = initial_noise(golden.meta["seeds"], 32, 64), torch.tensor(golden.meta["classes"])
    settings = SamplerSettings(steps=3, cfg=2.0)
    cpu = torch.device("cpu")
    GraphedSampler(TorchEngine(golden_model, cpu), cpu)(noise, y, 5, settings)
    assert gpu.captures == 2
    monkeypatch.setattr(FakeStream, "wait_stream", lambda self, other: None)
    graphed = GraphedSampler(TorchEngine(golden_model, cpu), cpu)
    with pytest.warns(UserWarning, match="capture failed"):
        graphed(noise, y, 5, settings)
    assert "without waiting" in graphed.fallback_reason


class _HostCopies(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts tensors made from host data (torch.tensor(...)): on CUDA each is a copy from pageable memory."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten.lift_fresh.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "extra",
    [{}, {"method": "ab3"}, {"cache_interval": 2, "token_forecast": "linear"}, {"method": "heun", "cache_interval": 3,
                                                                                "token_forecast": "quadratic"}],
)  # fmt: skip
def test_plain_sampling_copies_host_scalars_once_per_call_not_per_step(golden_model, golden, extra):
    from dip_export.sampling import sample

    engine = TorchEngine(golden_model, torch.device("cpu"))
    noise, y = initial_noise(golden.meta["seeds"], 32, 64), torch.tensor(golden.meta["classes"])
    counts = []
    for steps in (4, 9):
        with _HostCopies() as copies:
            sample(engine, noise, y, 5, SamplerSettings(steps=steps, cfg=2.5, **extra))
        counts.append(copies.count)
    assert counts[0] == counts[1] <= 2
