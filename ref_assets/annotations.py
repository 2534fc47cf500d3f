"""Annotations: the data dictionary of a dataset's store (labels, descriptions, methods...),
edited by operators on top of what the spec wrote, committed, and every change recorded.

>>> annotate("demo_air_temperature", "t2m", label="Air temperature at 2 m",
...          attributes={"method": "synthetic"}, by="alice")  # doctest: +SKIP
>>> read_annotations("demo_air_temperature").variables["t2m"]  # doctest: +SKIP
{'long_name': 'Air temperature at 2 m', 'method': 'synthetic'}

Where they live, all in the dataset's own store:

- the **attributes themselves** on the root group (the dataset) and on each variable's array, so
  every Zarr reader (``open_dataset``, ``xarray.open_zarr``) sees them; a label is ``title`` of
  the dataset or ``long_name`` of a variable (CF), a description ``summary`` or ``description``;
- the **log** in ``ref/annotations``: one JSON change per element (who, on which host, when,
  which target, what was set or removed and what it replaced), append-only;
- the **current operator annotations** in the attributes of that array, with the value each one
  replaced (a spec's), so that removing an annotation brings the spec's value back and a rebuilt
  store can be given exactly the operator's part (`ref_assets.annotations_stash`).

Period writes touch only variable chunks and records, and growing the time axis resizes the
arrays it opens in its own session from the tip (zarr keeps their attributes): neither drops an
annotation. An annotation is written and committed under the dataset's commit lock, as axis
growth is, so the two never conflict; a period writer whose session began before an annotation
of its variable sees its rebase refused (Icechunk: chunks updated in an updated array) and
rewrites its periods from the new tip, as it does after any conflicting commit.
"""

from __future__ import annotations

import getpass
import json
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import icechunk as ic
import zarr

import ref_assets
from ref_assets.config import Settings, load_settings
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.commits import MAX_COMMIT_ATTEMPTS, back_off
from ref_assets.store.layout import dataset_attributes, open_laid_out_root
from ref_assets.store.repository import DatasetStore, StoreError

if TYPE_CHECKING:
    import icechunk as ic

ANNOTATIONS_PATH = "ref/annotations"
CHANGE_FORMAT = "ref-assets/annotation-v1"

# What --label and --description set, on the dataset and on a variable.
LABEL_KEYS = {"dataset": ("title", "summary"), "variable": ("long_name", "description")}
# Attributes the layout owns: changing them changes what the data means (units are checked
# against the spec by every period's check) or how it is read.
RESERVED_KEYS = {
    "dataset": frozenset({"ref_assets"}),
    "variable": frozenset({"units", "grid_mapping", "coordinates", "_FillValue"}),
}


class AnnotationError(ValueError):
    """An annotation that cannot be made; the message names the dataset, the target and why."""


@dataclass(frozen=True)
class Annotations:
    """The operator's annotations: attributes of the dataset, and of each variable."""

    dataset: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, target: str | None) -> dict[str, Any]:
        return self.dataset if target is None else self.variables.get(target, {})

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "variables": self.variables}

    @classmethod
    def from_dict(cls, data: Mapping) -> Annotations:
        variables = data.get("variables", {})
        return cls(dict(data.get("dataset", {})), {k: dict(v) for k, v in variables.items()})


@dataclass(frozen=True)
class AnnotationChange:
    """One entry of a store's annotation log: who changed which attributes of what, and when."""

    id: str
    at: str  # UTC, ISO 8601
    by: str
    host: str
    target: str | None  # a variable, or None for the dataset
    set: dict[str, Any]
    removed: list[str]
    previous: dict[str, Any]  # each changed key's value before (None: it had none)
    # "edit"; "restore" (from a stash, onto a rebuilt store); "spec" (the spec's attributes now)
    action: str = "edit"
    tool: str = ""  # the ref-assets version that made the change
    format: str = CHANGE_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping) -> AnnotationChange:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def target_name(self) -> str:
        return "dataset" if self.target is None else f"variable {self.target}"


@dataclass(frozen=True)
class StoredAnnotations:
    """A store's annotations at one snapshot: the operator's, and the log of every change."""

    dataset_id: str
    snapshot_id: str
    annotations: Annotations
    history: list[AnnotationChange]
    laid_out: bool = True  # False: the store has no layout yet (nothing can be annotated)


@dataclass(frozen=True)
class AnnotationReceipt:
    """What an annotation commit produced."""

    dataset_id: str
    snapshot_id: str
    changes: list[AnnotationChange]


def annotate(
    dataset_id: str,
    variable: str | None = None,
    *,
    label: str | None = None,
    description: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    remove: Iterable[str] = (),
    by: str | None = None,
    settings: Settings | None = None,
) -> AnnotationReceipt:
    """Set (``label``, ``description``, ``attributes``) or ``remove`` operator annotations of
    the dataset, or of ``variable``, in one commit on ``main`` that also appends the change to
    the store's log. Removing an annotation brings back the value it replaced, if any.

    ``by`` names who made the change (default: the user this process runs as)."""
    target = "dataset" if variable is None else "variable"
    label_key, description_key = LABEL_KEYS[target]
    changes = dict(attributes or {})
    for key, value in ((label_key, label), (description_key, description)):
        if value is not None:
            changes[key] = value
    removed = list(dict.fromkeys(remove))
    where = f"{dataset_id} {'dataset' if variable is None else f'variable {variable}'}"
    if not changes and not removed:
        raise AnnotationError(
            f"{where}: nothing to annotate: give --label, --description, --attr KEY=VALUE or "
            "--remove KEY"
        )
    _check_keys(where, target, [*changes, *removed])
    if both := sorted(set(changes) & set(removed)):
        raise AnnotationError(f"{where}: {', '.join(both)} both set and removed; choose one")
    if nulls := sorted(key for key, value in changes.items() if value is None):
        raise AnnotationError(
            f"{where}: {', '.join(nulls)} set to None; to take an annotation back, remove it"
        )
    try:
        json.dumps(changes)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"{where}: attribute values must be JSON values ({err})") from None
    store = _store(dataset_id, settings)
    author = by or current_user()

    def edit(group: zarr.Group) -> list[AnnotationChange]:
        return [apply_change(group, where, variable, redact(changes), removed, by=author)]

    return commit_annotations(store, edit, author=author, branch="main")


def read_annotations(
    dataset_id: str, *, snapshot: str | None = None, settings: Settings | None = None
) -> StoredAnnotations:
    """The operator's annotations and their log, at the tip of ``main`` or at ``snapshot``."""
    store = _store(dataset_id, settings)
    session = store_reader.session_for(store, snapshot)
    with store.reporting("reading the annotations"):
        group = open_laid_out_root(session.store)
        if group is None:  # nothing laid out yet, so nothing annotated
            return StoredAnnotations(dataset_id, session.snapshot_id, Annotations(), [], False)
        state, _ = operator_state(group)
        return StoredAnnotations(dataset_id, session.snapshot_id, state, _history(group))


def annotated_attributes(session: ic.Session) -> dict[str | None, dict[str, Any]]:
    """For the dataset (None) and each variable, every attribute an annotation ever set or
    removed, with its value in ``session`` now (None: absent now): what a copy of the store
    made before some of those changes needs to show them (`ref_assets.open_dataset`)."""
    group = open_laid_out_root(session.store)
    if group is None:
        return {}
    touched: dict[str | None, set[str]] = {}
    for change in _history(group):
        touched.setdefault(change.target, set()).update(change.set, change.removed)
    variables = group.attrs["ref_assets"]["structure"]["variables"]
    shown = {}
    for target, keys in touched.items():
        if target is not None and target not in variables:
            continue
        attributes = (group if target is None else group[target]).attrs.asdict()
        shown[target] = {key: attributes.get(key) for key in sorted(keys)}
    return shown


def commit_annotations(
    store: DatasetStore,
    edit: Callable[[zarr.Group], list[AnnotationChange]],
    *,
    author: str,
    branch: str = "main",
) -> AnnotationReceipt:
    """Run ``edit(root_group)`` (which returns the changes it made) on ``branch`` and commit it,
    under the dataset's commit lock: axis growth also commits under it, so the two never
    conflict. On S3 (no lock) a commit that lost a race to another writer's is refused, and the
    edit runs again on the new tip. No change: no commit (the snapshot is the branch's tip)."""
    repo = store.open()
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        if attempt > 1:
            back_off(attempt)
        with store.reporting("annotating"), store.lock(run_id=f"annotation by {author}"):
            session = repo.writable_session(branch)
            if open_laid_out_root(session.store) is None:
                raise StoreError(
                    f"{store.no_periods_yet()}; a store is annotated once its first period laid "
                    "it out"
                )
            changes = edit(zarr.open_group(session.store, mode="r+"))
            if not changes:
                return AnnotationReceipt(store.dataset_id, session.snapshot_id, [])
            targets = sorted({"dataset" if c.target is None else c.target for c in changes})
            # A message only: Icechunk re-encodes every commit's metadata on each later commit
            # (`store.writer.commit_rebasing`); the log array holds who, when and what.
            try:
                snapshot = session.commit(
                    f"{store.dataset_id}: annotate {', '.join(targets)} (by {author})"
                )
            except ic.ConflictError:
                continue
        return AnnotationReceipt(store.dataset_id, snapshot, changes)
    raise StoreError(
        f"{store.dataset_id}: gave up annotating after {MAX_COMMIT_ATTEMPTS} attempts (other "
        "writers kept committing meanwhile); nothing was changed, run it again"
    )


def apply_change(
    group: zarr.Group,
    where: str,
    variable: str | None,
    changes: Mapping[str, Any],
    removed: list[str],
    *,
    by: str,
    action: str = "edit",
) -> AnnotationChange:
    """Set ``changes`` and remove ``removed`` on the dataset (``variable`` None) or a variable
    of the laid-out ``group``, keep the operator's state, and append the change to the log."""
    variables = list(group.attrs["ref_assets"]["structure"]["variables"])
    if variable is not None and variable not in variables:
        raise AnnotationError(
            f"{where}: the store has no such variable (it has {', '.join(variables)})"
        )
    node = group if variable is None else group[variable]
    state, replaced = operator_state(group)
    own = state.dataset if variable is None else state.variables.setdefault(variable, {})
    underlying = (
        replaced["dataset"] if variable is None else replaced["variables"].setdefault(variable, {})
    )
    if not_ours := [key for key in removed if key not in own]:
        raise AnnotationError(
            f"{where}: {', '.join(not_ours)} is no operator annotation (annotations: "
            f"{', '.join(own) or 'none'}); an attribute from the spec changes with the spec"
        )
    attributes = node.attrs.asdict()
    previous = {key: attributes.get(key) for key in [*changes, *removed]}
    for key, value in changes.items():
        if key not in own:  # the first override of a key: remember what it replaced
            underlying[key] = attributes.get(key)
        own[key] = value
    restored = {}
    for key in removed:
        del own[key]
        if (before := underlying.pop(key, None)) is not None:
            restored[key] = before
    node.attrs.update({**changes, **restored})
    for key in removed:
        if key not in restored:
            node.attrs.__delitem__(key)
    if variable is not None and not own:
        del state.variables[variable]
        del replaced["variables"][variable]
    change = _change(variable, dict(changes), removed, previous, by=by, action=action)
    append_to_log(group, [change], state=state, replaced=replaced)
    return change


def refresh_from_spec(
    spec: DatasetSpec, *, by: str | None = None, settings: Settings | None = None
) -> AnnotationReceipt:
    """Give the store the attributes its spec gives now (the dataset's title, description and
    attributes, each variable's attributes: written once, when the store was laid out), in one
    commit, one log entry (action ``spec``) per target that changed. A key the operator
    annotated keeps the operator's value; the spec's becomes the value that returns when the
    annotation is removed. Attributes the spec no longer has are left as they are."""
    store = _store(spec.id, settings)
    author = by or current_user()

    def edit(group: zarr.Group) -> list[AnnotationChange]:
        state, replaced = operator_state(group)
        stored = group.attrs["ref_assets"]["structure"]["variables"]
        targets = [(None, dataset_attributes(spec))]
        targets += [(v.name, redact(v.attributes)) for v in spec.variables if v.name in stored]
        changes = []
        for target, given in targets:
            kind = "dataset" if target is None else "variable"
            given = {k: v for k, v in given.items() if k not in RESERVED_KEYS[kind]}
            node = group if target is None else group[target]
            current, own = node.attrs.asdict(), state.of(target)
            beneath = replaced["dataset"] if target is None else replaced["variables"].get(target)
            direct = {k: v for k, v in given.items() if k not in own and current.get(k) != v}
            hidden = {k: v for k, v in given.items() if k in own and beneath.get(k) != v}
            if not direct and not hidden:
                continue
            previous = {k: current.get(k) for k in direct} | {k: beneath.get(k) for k in hidden}
            node.attrs.update(direct)
            if hidden:
                beneath.update(hidden)
            changes.append(
                _change(target, {**direct, **hidden}, [], previous, by=author, action="spec")
            )
        if changes:
            append_to_log(group, changes, state=state, replaced=replaced)
        return changes

    return commit_annotations(store, edit, author=author, branch="main")


def _change(
    target: str | None,
    changes: dict[str, Any],
    removed: list[str],
    previous: dict[str, Any],
    *,
    by: str,
    action: str,
) -> AnnotationChange:
    return AnnotationChange(
        id=uuid.uuid4().hex,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        by=by,
        host=socket.gethostname(),
        target=target,
        set=changes,
        removed=removed,
        previous=previous,
        action=action,
        tool=f"ref-assets {ref_assets.__version__}",
    )


def append_to_log(
    group: zarr.Group,
    changes: list[AnnotationChange],
    *,
    state: Annotations | None = None,
    replaced: dict | None = None,
) -> None:
    """Append ``changes`` to the log (creating it) and save the operator's state with it."""
    log = _log(group, create=True)
    if state is None or replaced is None:
        state, replaced = operator_state(group)
    length = log.shape[0]
    log.resize((length + len(changes),))
    if changes:
        log[length:] = [change.to_json() for change in changes]
    log.attrs.update({"annotations": state.to_dict(), "replaced": replaced})


def history_ids(group: zarr.Group) -> set[str]:
    return {change.id for change in _history(group)}


def _history(group: zarr.Group) -> list[AnnotationChange]:
    log = _log(group)
    if log is None or log.shape[0] == 0:
        return []
    return [AnnotationChange.from_dict(json.loads(str(text))) for text in log[:] if text]


def operator_state(group: zarr.Group) -> tuple[Annotations, dict]:
    """The operator's annotations, and the value each replaced ({"dataset", "variables"})."""
    log = _log(group)
    attributes = log.attrs.asdict() if log is not None else {}
    replaced = attributes.get("replaced", {})
    return Annotations.from_dict(attributes.get("annotations", {})), {
        "dataset": dict(replaced.get("dataset", {})),
        "variables": {k: dict(v) for k, v in replaced.get("variables", {}).items()},
    }


def _log(group: zarr.Group, *, create: bool = False) -> zarr.Array | None:
    try:
        return group[ANNOTATIONS_PATH]
    except KeyError:
        if not create:
            return None
    return group.create_array(
        ANNOTATIONS_PATH,
        shape=(0,),
        chunks=(1,),
        dtype=str,
        fill_value="",
        dimension_names=["change"],
    )


def _check_keys(where: str, target: str, keys: list[str]) -> None:
    if empty := [key for key in keys if not key or not key.strip()]:
        raise AnnotationError(f"{where}: an attribute needs a name ({len(empty)} without)")
    if reserved := sorted(set(keys) & RESERVED_KEYS[target]):
        raise AnnotationError(
            f"{where}: {', '.join(reserved)} belongs to the store's layout and cannot be "
            "annotated; change the spec (a changed unit needs a rebuild of the store)"
        )


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        return "unknown"


def _store(dataset_id: str, settings: Settings | None) -> DatasetStore:
    return DatasetStore((settings or load_settings()).storage_root, dataset_id)
