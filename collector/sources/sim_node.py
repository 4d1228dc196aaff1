"""The simulated node's InfiniBand ports and BMC power reading, straight from the fleet simulator."""

from __future__ import annotations

from typing import Any

from collector.batch import Batch, Entity
from collector.sim.engine import EVENT_IB_DOWN, EVENT_IB_UP, FleetSim
from collector.source import NoDataError, Source, SourceContext, register_source

IB_EVENT_KINDS = frozenset({EVENT_IB_DOWN, EVENT_IB_UP})


class SimNodeSource(Source):
    """IB port counters and node power of one simulated node (in memory, so not threaded).

    XIDs are not emitted here: the NVML device model delivers them from GpuState.pending_xids.
    """

    name = "sim_node"
    interval = 1.0
    timeout = 5.0

    def __init__(self, engine: FleetSim | None, node_index: int) -> None:
        self.engine = engine
        self.node_index = node_index
        if engine is None:
            return
        engine.node_index(node_index)               # ValueError for a node the fleet does not have
        node = engine.node_names[node_index]
        self.node = node
        self.ports = [Entity(kind="ib_port", node=node, id=f"{dev}/1", labels=(node, dev, "1"))
                      for dev in engine.ib_port_names]
        self.node_entity = Entity(kind="node", node=node, id=node, labels=(node,))

    async def update(self, ts_ns: int) -> Batch:
        """Advance the simulator to ts_ns and read this node's IB ports, power and IB events."""
        engine = self.engine
        if engine is None:
            raise NoDataError("sim_node: no simulator is running")
        engine.advance_to(ts_ns, sync=False)     # reads arrays only: skip refreshing GpuState records
        batch = Batch(source=self.name, ts_ns=ts_ns)
        ib = engine.ib_metrics()
        n = self.node_index
        for metric, values in ib.items():
            row = values[n]
            for p, entity in enumerate(self.ports):
                batch.add(metric, entity, float(row[p]))
        batch.add("fleetwatch_node_power_watts", self.node_entity, float(engine.node_power_w()[n]))
        batch.events.extend(engine.drain_events(node=n, kinds=IB_EVENT_KINDS))
        return batch


def _factory(ctx: SourceContext, options: dict[str, Any]) -> SimNodeSource:
    """Build the source for ctx.node (or options["node_index"]) of ctx.simulator."""
    engine = ctx.simulator
    if engine is None:
        return SimNodeSource(None, 0)
    if options.get("node_index") is not None:
        index = int(options["node_index"])
    elif ctx.node in engine.node_names:
        index = engine.node_names.index(ctx.node)
    else:
        raise ValueError(f"sim_node: node {ctx.node!r} is not in the simulated fleet "
                         f"({engine.node_names[0]}..{engine.node_names[-1]}); set collector.sim_node.node_index")
    return SimNodeSource(engine, index)


register_source("sim_node", default_enabled=True, factory=_factory, options=("node_index",))
