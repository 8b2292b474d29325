"""Network campaign (NOT BUILT YET): device and broker in network namespaces joined by a
veth pair, tc netem for latency, loss, reordering and partitions, 100 partitions of
random length during a 4-line day; 0 lost, 0 duplicated upstream, the backlog drains
after each.

What is missing, for whoever builds it (see docs/reliability.md):

* ``ip netns add lt-dev`` / ``lt-brk``, ``ip link add lt-v0 type veth peer name lt-v1``,
  addresses 10.77.0.1/30 and 10.77.0.2/30, cleanup in ``finally`` (``ip netns del``);
* a broker certificate with the broker namespace's IP in its subjectAltName (the sync
  test PKI only has ``localhost`` and 127.0.0.1, and the uploader checks the name);
* mosquitto and the ingest worker under ``ip netns exec lt-brk``, ``linetap simulate
  --speed N`` with sync on under ``ip netns exec lt-dev``;
* partitions as ``tc qdisc replace dev lt-v0 root netem loss 100%`` for a random
  length, then ``netem delay 80ms 20ms reorder 5% loss 2%``; after each, wait until
  the box's ``run/status.json`` backlog is 0, then compare box and upstream as
  ``bench/campaigns/powercut.py`` does (``common.compare_upstream``).

Until then this script says so and exits 2, so ``make campaign-network`` cannot pass
by accident.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    print("campaign-network is not built yet: see the docstring of bench/campaigns/network.py "
          "and docs/reliability.md")
    print(json.dumps({"campaign": "network", "built": False, "violations": None}))
    return 2


if __name__ == "__main__":
    sys.exit(main())
