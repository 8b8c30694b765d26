"""Issue 12, attack 1 on the peer's side: no state download and no progress report beyond the epoch bound."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from cairn.network.trusted_state import believable_progress, consistent_state, donors_to_try, refusal
from cairn.protocol.epoch_bound import EpochBound


def test_the_bound_grows_with_the_clock_from_the_last_answer():
    now = [100.0]
    bound = EpochBound(min_seconds_per_step=0.5, clock=lambda: now[0])
    assert bound.limit() is None and bound.allows(10**9)  # never told: hivemind's behaviour, nothing filtered
    bound.set(40)
    assert bound.limit() == 40 and bound.allows(40) and not bound.allows(41)
    now[0] += 10.0
    assert bound.limit() == 60  # two steps a second at most
    now[0] -= 30.0  # a clock that went back allows no less than what was told
    assert bound.limit() == 40


def test_donors_declaring_more_than_the_bound_are_skipped_and_the_rest_asked_highest_first():
    declared = {"honest-old": 3.0, "honest": 5.0, "liar": 1e9, "me": 6.0, "nan": math.nan}
    usable, skipped = donors_to_try(declared, own_id="me", limit=6)
    assert usable == ["honest", "honest-old"]
    assert sorted(skipped) == ["liar", "nan"]
    assert donors_to_try(declared, own_id="me", limit=math.inf)[0][0] == "liar"  # unbounded: hivemind's order


def test_a_downloaded_state_beyond_the_bound_or_not_finite_is_refused():
    good = [torch.ones(3), torch.arange(3)]
    assert refusal({"epoch": 5}, good, limit=6) is None
    assert "beyond" in refusal({"epoch": 10**9}, good, limit=6)
    assert "no epoch" in refusal({"epoch": "5"}, good, limit=6)
    assert "no epoch" in refusal(None, good, limit=6)
    assert "non-finite" in refusal({"epoch": 5}, [torch.tensor([1.0, math.nan])], limit=6)


def test_progress_reports_beyond_the_bound_are_left_out():
    entry = lambda epoch: SimpleNamespace(value={"epoch": epoch})  # noqa: E731
    metadata = {b"a": entry(5), b"b": entry(10**9), b"c": SimpleNamespace(value=None)}
    assert set(believable_progress(metadata, 6)) == {b"a", b"c"}
    assert believable_progress(metadata, None) is metadata
    assert believable_progress(None, 6) is None  # hivemind's "no peers" case passes through


@pytest.fixture(scope="module")
def static_model():
    """The default static encoder (BERT vocabulary) from a seeded random start, and its tokenizer."""
    from dataclasses import replace

    from cairn.protocol.encoder import build_encoder, config_for
    from cairn.protocol.run_config import TrainingConfig
    from cairn.protocol.tokenizer import TextTokenizer, make_tokenizer
    from cairn.training.task import encoder_config

    training = replace(TrainingConfig(), initialisation="random")
    tokenizer = TextTokenizer(make_tokenizer(training.vocabulary, [], 0), config_for(training.model).max_len)
    torch.manual_seed(0)
    return build_encoder(encoder_config(training, tokenizer)), tokenizer


def _pairs() -> list:
    from cairn.corpora.base import Pair

    words = ["river", "castle", "violin", "meadow", "rocket", "teapot", "lantern", "harbor", "canyon", "forest", "island", "tower"]
    colours = ["red", "blue", "green", "golden"]
    return [Pair(f"the {colour} {word} near the sea", f"{word} {colour}") for word in words for colour in colours]


def test_the_held_out_gate_refuses_a_state_that_retrieves_worse_and_loads_one_as_good_or_better(static_model):
    from cairn.network.state_gate import HeldOutStateGate, retrieval_accuracy

    model, tokenizer = static_model
    pairs = _pairs()
    gate = HeldOutStateGate(model, tokenizer, pairs)
    own = [parameter.detach().clone() for parameter in model.parameters()]
    assert retrieval_accuracy(model, tokenizer, pairs) > 0.5  # bag-of-words overlap: a random table already matches these
    assert gate(own, own) is None
    tampered = [torch.full_like(tensor, 666.0) for tensor in own]  # every text embeds alike
    assert "held-out pairs" in gate(tampered, own)
    poisoned = [tensor.clone().fill_(math.nan) for tensor in own]
    assert gate(poisoned, own) is not None
    assert gate(own, tampered) is None  # better than what this node holds: loaded (a joiner's broken start)
    assert "do not fit" in gate([tensor[:1] for tensor in own], own)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), own))  # scored on a copy: the live model untouched


def _swarm_optimizer(dht, value: float, optimizer_class, **kwargs):
    """A hivemind.Optimizer over one 4-value parameter (each node needs its own DHT: donors are told apart by PeerID)."""
    from hivemind.utils.crypto import RSAPrivateKey

    parameter = torch.nn.Parameter(torch.full((4,), value))
    return optimizer_class(
        dht=dht,
        run_id="trust-test",
        target_batch_size=10**6,  # no averaging round: only state sharing is under test
        batch_size_per_step=1,
        params=[parameter],
        optimizer=partial(torch.optim.SGD, lr=0.1),
        matchmaking_time=1.0,
        averaging_timeout=10.0,
        next_chunk_timeout=5.0,
        # a key per node: hivemind's default is one per process, and the four trackers would overwrite one progress entry
        tracker_opts=dict(min_refresh_period=0.2, max_refresh_period=1.0, private_key=RSAPrivateKey()),
        verbose=False,
        **kwargs,
    )


def _declare(optimizer, epoch: int, priority: float) -> None:
    optimizer.state_averager.local_epoch = epoch
    optimizer.state_averager.state_sharing_priority = priority
    optimizer.tracker.report_local_progress(local_epoch=epoch, samples_accumulated=1)  # hivemind publishes none before samples


@pytest.mark.slow  # real hivemind nodes and averagers, one process
@pytest.mark.timeout(240)
def test_a_joiner_loads_the_honest_state_while_a_donor_serves_a_tampered_one_at_epoch_10_to_the_9():
    import hivemind
    from swarm_util import wait_for

    from cairn.network.trusted_state import BoundedOptimizer

    nodes, optimizers = [], []
    try:
        root = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        nodes.append(root)
        join = [str(address) for address in root.get_visible_maddrs()]

        def node():
            dht = hivemind.DHT(start=True, initial_peers=join, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
            nodes.append(dht)
            return dht

        # the honest donor runs Cairn too: a plain hivemind peer would believe the lie, think itself behind, and stop
        # reporting its own progress
        honest = _swarm_optimizer(node(), 1.0, BoundedOptimizer, epoch_limit=lambda: 6)
        attacker = _swarm_optimizer(node(), 666.0, hivemind.Optimizer)
        # a stand-in for the held-out gate (cairn/network/state_gate.py, tested above): values this large are tampered
        gate = lambda downloaded, held: "tampered" if float(downloaded[0].detach().abs().max()) > 100 else None  # noqa: E731
        bounded = _swarm_optimizer(node(), 0.0, BoundedOptimizer, epoch_limit=lambda: 6, state_check=gate)
        plain = _swarm_optimizer(node(), 0.0, hivemind.Optimizer)
        optimizers += [honest, attacker, bounded, plain]
        _declare(honest, 5, 5.0)
        _declare(attacker, 10**9, 1e9)

        # the control: hivemind alone believes the attacker's progress and loads its state
        wait_for(lambda: plain.tracker.global_epoch == 10**9, timeout=60, interval=0.2, what="the plain tracker sees the lie")
        plain.load_state_from_peers()
        assert plain.local_epoch == 10**9 and float(plain.state_averager.main_parameters[0][0].detach()) == 666.0

        # bounded: the lie is not in the swarm's progress, the liar is skipped, the honest donor's state is loaded
        wait_for(lambda: bounded.tracker.global_epoch == 5, timeout=60, interval=0.2, what="the bounded tracker sees the honest peer")
        bounded.load_state_from_peers()
        assert bounded.local_epoch == 5
        assert torch.equal(bounded.state_averager.main_parameters[0].detach(), torch.ones(4))
        assert bounded.refused_downloads >= 1
        assert bounded.state_averager.applied_downloads == 1  # what cairn/peer/state_sync.py counts as synchronised

        # a liar that declares a believable priority but sends epoch 10^9: downloaded, refused, the next donor asked
        attacker.state_averager.state_sharing_priority = 5.5  # above the honest donor's 5: asked first
        refused_before = bounded.refused_downloads
        with torch.no_grad():
            bounded.state_averager.main_parameters[0].zero_()
        wait_for(
            lambda: (bounded.load_state_from_peers(), bounded.refused_downloads > refused_before)[1],
            timeout=60,
            interval=1.0,
            what="the liar's new priority is seen, its state refused",
        )
        assert bounded.local_epoch == 5
        assert torch.equal(bounded.state_averager.main_parameters[0].detach(), torch.ones(4))

        # a liar at a believable epoch and priority: its state fails the node's state check, the next donor is asked
        attacker.state_averager.local_epoch = 5
        refused_before = bounded.refused_downloads
        with torch.no_grad():
            bounded.state_averager.main_parameters[0].zero_()
        bounded.load_state_from_peers()
        assert bounded.refused_downloads > refused_before  # (the plain joiner, now declaring 10^9, is skipped each time too)
        assert bounded.local_epoch == 5
        assert torch.equal(bounded.state_averager.main_parameters[0].detach(), torch.ones(4))

        # a node ahead of every donor: hivemind downloads a state and refuses to apply it, which is not a download applied
        applied = bounded.state_averager.applied_downloads
        bounded.state_averager.local_epoch = 6
        bounded.load_state_from_peers()
        assert bounded.local_epoch == 6
        assert bounded.state_averager.applied_downloads == applied

        # the coordinator's second opinion on a failed spot check (cairn/coordinator/spot_checks.py): the state one
        # named peer serves, whatever the others declare, applied nowhere
        bounded.state_averager.local_epoch = 5
        for donor, value in ((attacker, 666.0), (honest, 1.0)):
            served = bounded.state_averager.state_of(donor.dht.peer_id.to_base58(), timeout=30)
            assert served is not None and served[0]["epoch"] == 5
            assert torch.equal(served[1][0], torch.full((4,), value))
        assert torch.equal(bounded.state_averager.main_parameters[0].detach(), torch.ones(4))  # nothing applied
        assert bounded.state_averager.state_of("not-a-peer-id", timeout=5) is None  # a record's id is untrusted input
        # a whole download within the deadline or nothing: a donor that trickles its stream holds the coordinator no longer
        assert bounded.state_averager.state_of(honest.dht.peer_id.to_base58(), timeout=1e-6) is None
    finally:
        for optimizer in optimizers:
            optimizer.shutdown()
        for dht in nodes:
            dht.shutdown()


def test_a_served_state_is_the_round_its_epoch_names_even_when_rounds_land_while_it_is_read_and_sent():
    """A donor (an overlapped DiLoCo peer, say) whose outer rounds land while a joiner (or the coordinator) downloads its state. hivemind reads the
    epoch, hands out its live tensors and serialises them later: here the first read races a round (it starts and
    lands between the epoch read and the tensors' use), and another round lands after the state was handed out,
    while it would be on the wire. Every parameter equals the number of rounds applied, so a state is consistent
    when its tensors equal its epoch."""
    donor = {"epoch": 5, "tensor": torch.full((4,), 5.0), "raced": False}

    def land_a_round() -> None:
        donor["epoch"] += 1  # hivemind: the epoch moves when the round starts
        donor["tensor"].add_(1.0)  # and the parameters when it lands, in place

    def read() -> tuple:
        metadata = {"epoch": donor["epoch"]}
        if not donor["raced"]:
            donor["raced"] = True
            land_a_round()
        return metadata, [donor["tensor"].detach().cpu()], ["info"]

    metadata, tensors, infos = consistent_state(read, lambda: donor["epoch"], lambda: None)
    land_a_round()  # while the state is serialised and sent
    assert infos == ["info"]
    assert metadata["epoch"] == 6 and torch.equal(tensors[0], torch.full((4,), 6.0)), (metadata, tensors)
