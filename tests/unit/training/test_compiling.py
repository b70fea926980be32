"""``--compile``: the compiled forward computes what the network computes, and a compiler that fails leaves
the run on the eager network with a message instead of a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scnas_dsl.errors import RunError
from scnas_dsl.nn import build_network
from scnas_dsl.training import compiling
from scnas_dsl.training.compiling import compile_forward
from tests.unit.nn.spaces import baseline_genotype, baseline_space


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(baseline_space(dims=3, width=4), baseline_genotype(), in_channels=1, num_classes=2)


@pytest.mark.slow
def test_compiled_forward_and_backward_match_the_network() -> None:
    net = _net()
    x = torch.randn(1, 1, 8, 8, 8)
    messages: list[str] = []
    run = compile_forward(net, x, train=True, what="the test", log=messages.append, backend="aot_eager")
    assert run is not net  # compiled, and said so before and after
    assert len(messages) == 2 and "compiling" in messages[0] and "aot_eager" in messages[0]
    assert "compiled for the test in" in messages[1]
    assert all(p.grad is None for p in net.parameters())  # the probe left no gradients behind
    out = run(x)
    out.square().mean().backward()
    compiled_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    ref = net(x)
    ref.square().mean().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(compiled_grads, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the module keeps its own state_dict keys (checkpoints stay loadable without --compile)
    assert not any(k.startswith("_orig_mod") for k in net.state_dict())


def test_a_failing_compiler_falls_back_to_the_eager_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.exc import TorchDynamoException

    def broken(module: torch.nn.Module, **kwargs: object):  # noqa: ANN202
        def call(*args: object) -> torch.Tensor:
            raise TorchDynamoException("no C++ compiler found\ndetails")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    net = _net()
    messages: list[str] = []
    run = compile_forward(net, torch.randn(1, 1, 8, 8, 8), train=False, what="prediction", log=messages.append)
    assert run is net
    assert len(messages) == 2 and "compiling" in messages[0]
    assert "prediction" in messages[1] and "no C++ compiler found" in messages[1] and "eagerly" in messages[1]
    assert "details" not in messages[1]  # one line


def test_a_real_error_of_the_network_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def oom(module: torch.nn.Module, **kwargs: object):  # noqa: ANN202
        def call(*args: object) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return call

    monkeypatch.setattr(torch, "compile", oom)
    with pytest.raises(torch.OutOfMemoryError):
        compile_forward(_net(), torch.randn(1, 1, 8, 8, 8), train=True, what="retraining", log=print)


def test_the_backend_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCNAS_COMPILE_BACKEND", raising=False)
    assert compiling.compile_backend() == "inductor"
    monkeypatch.setenv("SCNAS_COMPILE_BACKEND", "aot_eager")
    assert compiling.compile_backend() == "aot_eager"
    monkeypatch.setenv("SCNAS_COMPILE_BACKEND", "bogus")
    with pytest.raises(RunError, match="SCNAS_COMPILE_BACKEND='bogus' is not a torch.compile backend"):
        compiling.compile_backend()


@pytest.mark.slow
def test_the_probe_reaches_the_deep_supervision_heads_under_ddp(tmp_path) -> None:  # noqa: ANN001
    """The training probe backpropagates every output: under DDP (gloo, one process) a head without gradient
    left its reduction unfinished and the first training step raised."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        from scnas_dsl.loader import load

        torch.manual_seed(0)
        space, genotype = load(Path(__file__).resolve().parents[3] / "specs" / "baselines" / "unet3d.scn").genotype()
        net = build_network(space, genotype, in_channels=1, num_classes=2, stem_width=2, deep_supervision=True)
        assert net.plan.deep_supervision  # heads to reach
        net.deep_supervision = True
        model = DistributedDataParallel(net)
        x = torch.randn(1, 1, 16, 16, 16)
        reached: set[str] = set()
        for name, p in net.named_parameters():
            p.register_hook(lambda g, name=name: reached.add(name))
        run = compile_forward(model, x, train=True, what="the test", log=lambda _: None, backend="eager")
        assert reached == {name for name, _ in net.named_parameters()}
        outputs = run(x)  # the first step after the probe
        torch.stack([o.float().mean() for o in outputs]).sum().backward()
    finally:
        dist.destroy_process_group()
