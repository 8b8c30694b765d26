"""Does a short matchmaking window split a swarm into groups? (issue 13; docs/benchmarks.md section 10)

    .venv/bin/python bench/group_split.py --matchmaking-times 1 5 --offsets 0 0.5 1.5 3 --repeats 3 --out bench/out/group_split.json

In a churn run of four peers behind 50 Mbit/s links, the outer rounds after a newcomer joined averaged in two groups of
two, round after round, each by its own count a success. hivemind pre-schedules a round when its tracker's estimate
of the round's end is within `--matchmaking-time`, and declares itself a leader until that time plus the
matchmaking time (`Optimizer._maybe_schedule_gradient_averaging`, `schedule_step`); a peer joins only a leader that
declared an earlier end than its own, and a leader starts its group at its declared end (or once the quorum is in).
So peers whose estimates of the round's end differ by more than the window cannot meet: the hypothesis measured here.

Four real hivemind averagers with the peer's quorum rule (`GroupQuorum`, expecting all four, as the tracker would)
on loopback DHTs: two schedule their round at t0, two at t0 + offset (the disagreement between their estimates).
Each configuration is repeated; the table counts the groups each round formed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import hivemind
import torch
from hivemind.utils import get_dht_time

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cairn.peer.deadlines import GroupQuorum  # noqa: E402

PEERS = 4


class QuorumAverager(GroupQuorum, hivemind.averaging.DecentralizedAverager):
    """A hivemind averager with the peer's quorum rule (the peer mixes it into its gradient averager)."""


def one_round(averagers: list, matchmaking_time: float, offset: float) -> list[int]:
    """Half the peers schedule their round now, the other half `offset` s later; each peer's group size (0: none)."""
    controls = []
    half = len(averagers) // 2
    for index, averager in enumerate(averagers):
        if index == half and offset > 0:
            time.sleep(offset)
        averager.expected_group.value = len(averagers)  # the tracker counts every peer
        controls.append(averager.step(wait=False, scheduled_time=get_dht_time() + matchmaking_time, timeout=60, allow_retries=False))
    sizes = []
    for control in controls:
        try:
            sizes.append(len(control.result(timeout=90)))
        except Exception:  # hivemind: could not find a group, or the all-reduce failed
            sizes.append(0)
    return sizes


def groups_of(sizes: list[int]) -> int:
    """How many groups a round formed (a peer alone or without a group counts as one)."""
    return round(sum(1 / s for s in sizes if s >= 2)) + sum(1 for s in sizes if s < 2)


def measure(matchmaking_time: float, offsets: list[float], repeats: int) -> list[dict]:
    first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    dhts = [first] + [
        hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=first.get_visible_maddrs()) for _ in range(PEERS - 1)
    ]
    averagers = [
        QuorumAverager(
            [torch.full((4096,), float(index))],
            dht=dht,
            start=True,
            prefix=f"split{int(matchmaking_time * 10)}",
            min_group_size=2,
            min_matchmaking_time=matchmaking_time,
            request_timeout=0.5,  # the run's default (SwarmConfig.request_timeout)
            allreduce_timeout=30.0,
            next_chunk_timeout=5.0,
        )
        for index, dht in enumerate(dhts)
    ]
    rows = []
    try:
        one_round(averagers, matchmaking_time, 0.0)  # a first round: the DHT's routing tables are warm for every row
        for offset in offsets:
            for repeat in range(repeats):
                started = time.monotonic()
                sizes = one_round(averagers, matchmaking_time, offset)
                rows.append(
                    dict(
                        matchmaking_time=matchmaking_time,
                        offset=offset,
                        repeat=repeat,
                        sizes=sizes,
                        groups=groups_of(sizes),
                        seconds=round(time.monotonic() - started, 2),
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| matchmaking time, s | offset between the halves, s | rounds in one group of four | rounds split (groups) | round length, s (median) |",
        "|---|---|---|---|---|",
    ]
    keys = sorted({(r["matchmaking_time"], r["offset"]) for r in rows})
    for mt, offset in keys:
        same = [r for r in rows if (r["matchmaking_time"], r["offset"]) == (mt, offset)]
        whole = sum(1 for r in same if r["sizes"] == [PEERS] * PEERS)
        split = [r["groups"] for r in same if r["sizes"] != [PEERS] * PEERS]
        seconds = sorted(r["seconds"] for r in same)[len(same) // 2]
        lines.append(f"| {mt:g} | {offset:g} | {whole} of {len(same)} | {len(split)} {split if split else ''} | {seconds:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matchmaking-times", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--offsets", type=float, nargs="+", default=[0.0, 0.5, 1.5, 3.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = [row for mt in args.matchmaking_times for row in measure(mt, args.offsets, args.repeats)]
    print(table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
