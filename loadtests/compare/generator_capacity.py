"""How many arrivals per second one core of `agentcli loadtest` starts on time, against a target that answers at
once (so the generator, not the target, is measured). Prints started/s, dropped, start-lag percentiles and the
CPU share the generator used.

    PYTHONPATH=. python loadtests/compare/generator_capacity.py 5000 10000 20000
"""

import sys
import time

import uvloop

from agentcli.loadtest.plan import resolve
from agentcli.loadtest.scenario import LoadSpec
from agentcli.loadtest.session import run_local
from agentcli.loadtest.targets import LoadTarget


class Instant(LoadTarget):
    name = "instant"

    async def call(self, payload, probe):
        return None


async def measure(rate: int) -> None:
    out = await run_local(resolve(LoadSpec(rate=f"{rate}/s", duration="5s")), None, target=Instant())
    total = out.collector.total()
    p = total.hists["lag"].percentiles((50, 99, 99.9))
    print(
        f"{rate}/s: started {round(total.started / total.duration_s)}/s, dropped {total.dropped}, "
        f"start lag p50 {p[50] * 1e3:.3f} ms, p99 {p[99] * 1e3:.3f} ms, p99.9 {p[99.9] * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        cpu0, t0 = time.process_time(), time.perf_counter()
        uvloop.run(measure(int(arg)))
        print(f"  generator CPU share: {(time.process_time() - cpu0) / (time.perf_counter() - t0):.2f}")
