"""Timestamped batches of readings: what every source produces and every sink consumes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from collector.catalogue import DCGM_GPU_LABELS, ENTITY_LABELS


@dataclass(frozen=True, slots=True)
class Entity:
    """The thing a reading describes: a GPU, an NVLink, an interface, an IB port, a RAPL zone, a node.

    `id` is the trace's entity column (GPU UUID, "eth0", "mlx5_0/1", "GPU-…/nvlink3", "package-0").
    `labels` are the native identity label values in catalogue.ENTITY_LABELS[kind] order;
    `dcgm_labels` the dcgm-exporter label values in DCGM_GPU_LABELS order (GPU-like kinds only).
    """

    kind: str
    node: str
    id: str
    labels: tuple[str, ...]
    dcgm_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        want = len(ENTITY_LABELS[self.kind])
        if len(self.labels) != want:
            raise ValueError(f"entity {self.id!r} of kind {self.kind} needs {want} labels, got {self.labels}")
        if self.dcgm_labels and len(self.dcgm_labels) != len(DCGM_GPU_LABELS):
            raise ValueError(f"entity {self.id!r}: dcgm labels need {len(DCGM_GPU_LABELS)} values")


def gpu_entity(node: str, index: int, uuid: str, pci_bus_id: str, model: str, driver: str,
               minor: int | None = None) -> Entity:
    """The Entity for one GPU, with native and dcgm-exporter identity labels (device = /dev/nvidia<minor>)."""
    device = f"nvidia{index if minor is None else minor}"
    return Entity(
        kind="gpu",
        node=node,
        id=uuid,
        labels=(node, str(index), uuid, pci_bus_id, device, model, driver),
        dcgm_labels=(str(index), uuid, pci_bus_id, device, model, node, driver),
    )


def nvlink_entity(gpu: Entity, link: int) -> Entity:
    """The Entity for one NVLink of a GPU."""
    return Entity(kind="nvlink", node=gpu.node, id=f"{gpu.id}/nvlink{link}",
                  labels=(*gpu.labels, str(link)), dcgm_labels=gpu.dcgm_labels)


@dataclass(frozen=True, slots=True)
class Event:
    """An observable event (XID, GPU lost, link flap, injected fault) for the events table."""

    ts_ns: int
    node: str
    entity: str
    kind: str
    code: int
    detail: str = ""


@dataclass(slots=True)
class Batch:
    """One source's readings at one instant, column by column (struct of arrays)."""

    source: str
    ts_ns: int
    metric: list[str] = field(default_factory=list)
    entity: list[Entity] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    extra: list[tuple[str, ...]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def add(self, metric: str, entity: Entity, value: float, extra: tuple[str, ...] = ()) -> None:
        """Append one reading; `extra` holds values for the metric's labels beyond the entity's."""
        self.metric.append(metric)
        self.entity.append(entity)
        self.value.append(float(value))
        self.extra.append(extra)

    def __len__(self) -> int:
        return len(self.metric)

    def rows(self) -> list[tuple[str, Entity, float, tuple[str, ...]]]:
        """The readings as (metric, entity, value, extra) tuples."""
        return list(zip(self.metric, self.entity, self.value, self.extra, strict=True))


def entity_record(e: Entity) -> dict[str, str]:
    """An entity as a row of the trace's entities table (labels as JSON objects)."""
    labels = json.dumps(dict(zip(ENTITY_LABELS[e.kind], e.labels, strict=True)), separators=(",", ":"))
    dcgm = json.dumps(dict(zip(DCGM_GPU_LABELS, e.dcgm_labels, strict=True)), separators=(",", ":")) \
        if e.dcgm_labels else ""
    return {"node": e.node, "entity": e.id, "kind": e.kind, "labels": labels, "dcgm_labels": dcgm}


def entity_from_record(row: dict[str, str]) -> Entity:
    """Rebuild an Entity from an entities-table row; ValueError names what is wrong."""
    kind = row["kind"]
    if kind not in ENTITY_LABELS:
        raise ValueError(f"entity {row.get('entity')!r}: unknown kind {kind!r}")
    labels = json.loads(row["labels"])
    dcgm = json.loads(row["dcgm_labels"]) if row.get("dcgm_labels") else {}
    try:
        values = tuple(str(labels[k]) for k in ENTITY_LABELS[kind])
        dcgm_values = tuple(str(dcgm[k]) for k in DCGM_GPU_LABELS) if dcgm else ()
    except KeyError as err:
        raise ValueError(f"entity {row.get('entity')!r}: label {err} missing") from None
    return Entity(kind=kind, node=row["node"], id=row["entity"], labels=values, dcgm_labels=dcgm_values)
