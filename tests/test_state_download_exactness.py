"""Per-step gradient averaging: a state download must hand the downloader the donor's exact training state.

Peers that apply the same averaged gradient stay identical only if their optimizers hold the same state. Here a donor
trains 12 epochs through Cairn's own `make_optimizer` (BoundedOptimizer, AdamWTowardStart, LambdaLR, Cairn's
load_state_compression), then
- a newcomer downloads right after it was built, as a late joiner does (cairn/peer/node.py, before its first step);
- a veteran, whose optimizer has already stepped once (a peer that fell behind), downloads too.
Both should then hold the donor's parameters, AdamW moments and per-parameter `step`, the schedule and the epoch, and
one identical gradient should move all three identically.

What the first test showed before `BoundedOptimizer` asked hivemind to initialise the optimizer's state: the newcomer
got no AdamW state at all. hivemind built the optimizer with `initialize_optimizer=None`, which runs its
zero-gradient initial step only when the optimizer's state_dict holds no tensor (hivemind/optim/state_averager.py `_init_components`); AdamWTowardStart's state_dict always
holds its `start` tensors, so the newcomer's `state` stays {}. `load_optimizer_state` packs the donor's flat list into
the receiver's own state_dict structure (nested_pack), which has no slot for exp_avg, exp_avg_sq or step: they are
dropped without an error. The newcomer restarted Adam from zero (step 0, no moments), and its next updates were about
lr * sign(g) on every touched coordinate where the donor's are m / sqrt(v). The veteran (non-empty state) got them
exactly. The second test pins that parameters arrive as fp16 (node.py's load_state_compression), rounded once.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import replace

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

EPOCHS = 12


def _gradients(shapes, seed: int) -> list[torch.Tensor]:
    """Sparse like an embedding's: rows 0-3 touched, row 4 touched with tiny values, the rest exactly zero."""
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for shape in shapes:
        g = torch.randn(shape, generator=generator) * 1e-2
        if len(shape) == 2:
            g[4] *= 1e-4
            g[5:] = 0
        grads.append(g)
    return grads


def _step(optimizer, grads) -> None:
    """One global epoch as hivemind.Optimizer applies it after a gradient round: the averaged gradient in the
    (offloaded) optimizer's .grad (Cairn's averager uses custom_gradients), then the state averager's step."""
    averager = optimizer.state_averager
    with torch.no_grad():
        for param, grad in zip((p for group in averager.optimizer.param_groups for p in group["params"]), grads):
            param.grad.copy_(grad)
    averager.step(increment_epoch=True, optimizer_step=True)  # as _update_global_epoch: no zero_grad


def _adam_state(optimizer) -> list[dict]:
    averager = optimizer.state_averager
    params = [p for group in averager.optimizer.param_groups for p in group["params"]]
    return [{key: value.detach().clone() for key, value in averager.optimizer.state.get(p, {}).items()} for p in params]


def _main(optimizer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in optimizer.state_averager.main_parameters]


@pytest.fixture(scope="module")
def swarm():
    import hivemind
    from hivemind.utils.crypto import RSAPrivateKey
    from swarm_util import wait_for

    from cairn.peer.node import make_optimizer
    from cairn.protocol.run_config import RunConfig

    torch.set_num_threads(1)
    config = RunConfig(run_id="exact", corpus="c", corpus_digest="d", tokenizer_digest="t", landmarks_digest="l", landmarks_version=1)
    config = replace(config, swarm=replace(config.swarm, averaging="gradients", target_batch_size=10**6))  # no rounds
    nodes, optimizers = [], []
    root = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    nodes.append(root)
    join = [str(address) for address in root.get_visible_maddrs()]

    def peer(seed: int):
        dht = hivemind.DHT(start=True, initial_peers=join, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        nodes.append(dht)
        torch.manual_seed(seed)
        params = [torch.nn.Parameter(torch.randn(12, 8) * 0.3), torch.nn.Parameter(torch.randn(8) * 0.3)]
        optimizer = make_optimizer(
            dht, params, config, 1, config.swarm.wire_compression, mp.Value("q", 0), mp.Value("q", 0), RSAPrivateKey()
        )
        optimizers.append(optimizer)
        return optimizer

    def download(optimizer) -> None:
        before = optimizer.state_averager.applied_downloads

        def loaded() -> bool:
            optimizer.load_state_from_peers()
            return optimizer.state_averager.applied_downloads > before

        wait_for(loaded, timeout=60, interval=0.5, what="a state download applied")

    try:
        donor = peer(0)
        shapes = [p.shape for p in donor.state_averager.main_parameters]
        for epoch in range(EPOCHS):
            _step(donor, _gradients(shapes, epoch))
        donor.state_averager.state_sharing_priority = donor.local_epoch
        veteran = peer(2)
        _step(veteran, _gradients(shapes, 100))  # its optimizer has a state: a peer that fell behind
        newcomer = peer(1)  # downloads before its first step, as node.py's late joiner does
        download(newcomer)
        download(veteran)
        loaded = {name: _main(optimizer) for name, optimizer in (("donor", donor), ("newcomer", newcomer), ("veteran", veteran))}
        yield dict(donor=donor, newcomer=newcomer, veteran=veteran, shapes=shapes, loaded=loaded)
    finally:
        for optimizer in optimizers:
            optimizer.shutdown()
        for dht in nodes:
            dht.shutdown()


def test_a_downloaded_state_holds_the_donor_s_adam_moments_and_steps_and_moves_like_the_donor(swarm):
    donor, newcomer, veteran = swarm["donor"], swarm["newcomer"], swarm["veteran"]
    for receiver in (newcomer, veteran):
        assert receiver.local_epoch == donor.local_epoch == EPOCHS
        assert receiver.state_averager.scheduler.last_epoch == donor.state_averager.scheduler.last_epoch
        assert receiver.state_averager.optimizer.param_groups[0]["lr"] == donor.state_averager.optimizer.param_groups[0]["lr"]
        assert all(torch.equal(a, b) for a, b in zip(receiver.state_averager.optimizer.start, donor.state_averager.optimizer.start))

    expected = _adam_state(donor)
    assert all(set(state) == {"step", "exp_avg", "exp_avg_sq"} and float(state["step"]) >= EPOCHS for state in expected)
    # control: an optimizer that already had a state receives the donor's exactly
    for got, want in zip(_adam_state(veteran), expected):
        assert set(got) == set(want) and all(torch.equal(got[key], want[key]) for key in want)

    # the same gradient applied by all three must move them the same (updates compared: parameters arrive as fp16)
    before = {name: _main(swarm[name]) for name in ("donor", "newcomer", "veteran")}
    newcomer_state = _adam_state(newcomer)
    grads = _gradients(swarm["shapes"], 999)
    for name in ("donor", "newcomer", "veteran"):
        _step(swarm[name], grads)
    moved = {name: [after - start for after, start in zip(_main(swarm[name]), before[name])] for name in before}
    scale = max(float(d.abs().max()) for d in moved["donor"])
    off = {name: max(float((a - b).abs().max()) for a, b in zip(moved[name], moved["donor"])) / scale for name in ("newcomer", "veteran")}
    assert off["veteran"] < 1e-2, off

    assert all(set(state) == {"step", "exp_avg", "exp_avg_sq"} for state in newcomer_state), (
        f"the newcomer's AdamW state after the download: {[sorted(state) for state in newcomer_state]} "
        f"(the donor's: exp_avg, exp_avg_sq and step {float(expected[0]['step']):.0f} per parameter); one identical gradient then moved it "
        f"{off['newcomer']:.2f} x the donor's largest update away from the donor's update (the veteran {off['veteran']:.1e})"
    )
    for got, want in zip(newcomer_state, expected):
        assert all(torch.equal(got[key], want[key]) for key in want)
    assert off["newcomer"] < 1e-2, off


def test_downloaded_parameters_are_the_donor_s_to_fp16_rounding(swarm):
    """Parameters travel as fp16 (cairn/peer/node.py: load_state_compression=make_state_compression("fp16", ...)),
    whatever the run's wire compression: half the bytes of every catch-up, for an offset of at most half an fp16 ulp
    (2^-11 relative) that does not grow (the per-step swarm tests bound peers at one epoch by moved / 20)."""
    donor = swarm["loaded"]["donor"]  # as they were right after the downloads
    for name in ("newcomer", "veteran"):
        got = swarm["loaded"][name]
        for a, b in zip(got, donor):
            assert torch.equal(a, b.half().float()), f"{name}: not the donor's parameters rounded to fp16"
