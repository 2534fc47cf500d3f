"""Making sure the Dagster instance of ``DAGSTER_HOME`` exists before runs start.

Dagster creates its SQLite storage on first use, in whichever process gets there first, with no
lock between processes. Eight ``dagster asset materialize`` processes started at once on a fresh
``DAGSTER_HOME`` (measured here) all failed: "table runs already exists", "table instigators already
exists", "UNIQUE constraint failed: alembic_version.version_num", and the run database was left
with two alembic heads. `init_instance` creates everything once, under a file lock in
``DAGSTER_HOME``, so that any number of runs can start at once afterwards:

- ``dagster.yaml``: ref_assets' packaged instance config is written when there is none (an
  existing one, a link included, is kept as it is);
- the run storage (``history/runs.db``: tables, alembic stamp, data migrations and the instance id
  row), the event log's index (``history/runs/index.db``) and the schedule storage
  (``schedules/schedules.db``), each opened and queried once. The event log's per-run databases
  are created by each run for its own id, which no other process shares, so they do not race.

It is idempotent: on an existing instance it only opens and queries the storages, and sets the
pools' limits (`ref_assets.pools`) where they differ from the specs'.

Deployment modes (`MODES`) choose the config written: ``local`` is the packaged ``dagster.yaml``
(SQLite in ``DAGSTER_HOME``, runs as subprocesses of the daemon), ``production`` replaces its
storage by PostgreSQL and adds run limits per dataset and provider (``data/instance/
production.yaml``), ``cluster`` adds to that a run launcher putting each run in its own container
(``data/instance/cluster.yaml``). An overlay's top-level keys replace the base's, comments kept.

>>> report = init_instance(Path("/srv/dagster"))  # doctest: +SKIP
>>> report.config_written  # doctest: +SKIP
False
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from ref_assets.files import atomic_write_bytes

if TYPE_CHECKING:
    import dagster as dg

    from ref_assets.pools import PoolLimit

CONFIG_FILE_NAME = "dagster.yaml"
# Each mode's overlays on the packaged dagster.yaml, in order (`instance_config`).
MODES: dict[str, tuple[str, ...]] = {
    "local": (),
    "production": ("production.yaml",),
    "cluster": ("production.yaml", "cluster.yaml"),
}
MODE_HEADER = "# ref_assets instance mode: "
LOCK_FILE_NAME = ".ref_assets_instance.lock"
# Creating a fresh SQLite instance takes about a second; a minute means the holder is stuck.
LOCK_TIMEOUT_SECONDS = 60.0


class InstanceInitError(RuntimeError):
    """The Dagster instance cannot be found or initialized; the message says what to do."""


@dataclass(frozen=True)
class InstanceReport:
    """What `init_instance` found and did."""

    home: Path
    config_written: bool
    storages: tuple[str, ...]  # the storage classes opened, e.g. "runs: SqliteRunStorage"
    mode: str  # a key of MODES, or "custom" for a config `instance_config` did not write
    pools: tuple[PoolLimit, ...] = ()
    pools_changed: tuple[str, ...] = ()  # the pools whose limit this call set


def dagster_home(environ: Mapping[str, str] = os.environ) -> Path:
    """The instance directory named by ``DAGSTER_HOME``; an error says how to set it."""
    value = environ.get("DAGSTER_HOME")
    if not value:
        raise InstanceInitError(
            "DAGSTER_HOME is not set: set it to the directory of the Dagster instance that should "
            "record the runs (for example `export DAGSTER_HOME=$PWD/.dagster`)"
        )
    return Path(value).expanduser().absolute()


def instance_config(mode: str) -> str:
    """The ``dagster.yaml`` text of ``mode``: the packaged config with the mode's overlays,
    each overlay's top-level keys (and the comments above them) replacing the base's."""
    if mode not in MODES:
        raise InstanceInitError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    data = resources.files("ref_assets").joinpath("data")
    blocks = _top_level_blocks(data.joinpath(CONFIG_FILE_NAME).read_text())
    for overlay in MODES[mode]:
        blocks.update(_top_level_blocks(data.joinpath("instance", overlay).read_text()))
    body = "\n".join(block.rstrip("\n") + "\n" for block in blocks.values())
    return f"{MODE_HEADER}{mode} (written by `ref-assets instance init --mode {mode}`)\n{body}"


def _top_level_blocks(text: str) -> dict[str, str]:
    """``text`` cut at its top-level keys, in order: each block holds the comments above its key
    (the file's leading comment goes with the first key), the key and its indented lines."""
    blocks: dict[str, str] = {}
    leading: list[str] = []
    key = None
    for line in text.splitlines(keepends=True):
        if line[:1].isalnum() or line[:1] == "_":
            key = line.split(":", 1)[0].strip()
            blocks[key] = "".join(leading) + line
            leading = []
        elif key is None or line.startswith("#") or (leading and not line.strip()):
            leading.append(line)
        else:  # indented, or a blank line ending a block
            blocks[key] += line
    if leading and key is not None:
        blocks[key] += "".join(leading)
    return blocks


def config_mode(text: str) -> str:
    """The mode a ``dagster.yaml`` was written for, "custom" if `instance_config` did not
    write it as it is now."""
    first = text.split("\n", 1)[0]
    if first.startswith(MODE_HEADER):
        mode = first.removeprefix(MODE_HEADER).split(" ", 1)[0]
        if mode in MODES and text == instance_config(mode):
            return mode
    packaged = resources.files("ref_assets").joinpath("data", CONFIG_FILE_NAME).read_text()
    return "local" if text == packaged else "custom"


def init_instance(
    home: Path, mode: str | None = None, pools: Sequence[PoolLimit] = ()
) -> InstanceReport:
    """Create the instance in ``home`` if needed (config and every storage), under a file lock,
    and give each of ``pools`` its limit. Without a config, ``mode``'s is written (default:
    local); with one, a ``mode`` it was not written for is an error: the operator moves it
    aside first (see the README's "Deployment modes")."""
    import dagster as dg  # here, not at import: every ref-assets command imports this module
    from alembic.util.exc import CommandError as SchemaError
    from sqlalchemy.exc import SQLAlchemyError

    lock_path = home / LOCK_FILE_NAME
    try:
        home.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path, timeout=LOCK_TIMEOUT_SECONDS):
            config_written, found = _ensure_config(home, mode)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                storages = _create_storages(instance)
                changed = set_pool_limits(instance, pools)
    except Timeout:
        raise InstanceInitError(
            f"waited {LOCK_TIMEOUT_SECONDS:.0f} s for {lock_path}: another process is initializing "
            "the Dagster instance and has not finished; if no ref-assets or ./dev command is "
            "running, that process is stuck: stop it, then run `ref-assets instance init` again"
        ) from None
    except OSError as err:
        raise InstanceInitError(
            f"cannot initialize the Dagster instance in {home}: {err}; make DAGSTER_HOME a "
            "writable directory"
        ) from err
    except dg.DagsterError as err:
        raise InstanceInitError(
            f"the Dagster instance in {home} cannot be opened: {err}; fix "
            f"{home / CONFIG_FILE_NAME} (or move it aside to get ref_assets' default)"
        ) from err
    except (SchemaError, SQLAlchemyError) as err:
        # What processes that created the storage at once, without this lock, leave behind.
        raise InstanceInitError(
            f"the Dagster instance's database in {home} is damaged ({str(err).splitlines()[0]}), "
            "typically by several processes creating it at once; Dagster cannot open it. Move "
            f"{home / 'history'} and {home / 'schedules'} aside (their run history is lost to "
            "the UI; `ref-assets sync-instance` reports the stored periods again), then run "
            "`ref-assets instance init`"
        ) from err
    return InstanceReport(home, config_written, storages, found, tuple(pools), changed)


def _ensure_config(home: Path, mode: str | None) -> tuple[bool, str]:
    """Write ``mode``'s ``dagster.yaml`` into ``home`` unless one is there; return whether it
    was written and the mode of the config now there. A dangling link is an error: replacing
    it would hide a broken setup; so is an existing config of another mode than ``mode``."""
    target = home / CONFIG_FILE_NAME
    if target.is_symlink() and not target.exists():
        raise InstanceInitError(
            f"{target} links to {os.readlink(target)}, which does not exist (a moved checkout?): "
            "remove the link (then ref_assets' default is written) or point it at a dagster.yaml"
        )
    if target.exists():
        found = config_mode(target.read_text())
        if mode is not None and found != mode:
            raise InstanceInitError(
                f"{target} is the {found} config, not the {mode} one, and is kept: move it aside "
                f"(`mv {target} {target}.{found}`), then run `ref-assets instance init --mode "
                f'{mode}` again; the README\'s "Deployment modes" says what moves with it'
            )
        return False, found
    text = instance_config(mode or "local")
    atomic_write_bytes(target, text.encode())
    return True, mode or "local"


def set_pool_limits(instance: dg.DagsterInstance, pools: Sequence[PoolLimit]) -> tuple[str, ...]:
    """Give each pool that has a limit that limit in ``instance``; return the pools changed.
    A limit set in the UI for such a pool is replaced (the specs and providers say it); one set
    for a pool without a limit of its own (a local archive on a shared disk) is left alone."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return ()
    changed = []
    for pool in pools:
        if (
            pool.limit is not None
            and storage.get_concurrency_info(pool.pool).slot_count != pool.limit
        ):
            storage.set_concurrency_slots(pool.pool, pool.limit)
            changed.append(pool.pool)
    return tuple(changed)


def _create_storages(instance: dg.DagsterInstance) -> tuple[str, ...]:
    """Open and query every storage once, so each creates its tables now, under the lock.

    The storages create their tables when the instance opens them; the queries make sure, and
    the run storage id (a row that the first readers of a new database would otherwise insert
    concurrently) is created here too."""
    instance.run_storage.get_run_storage_id()
    instance.event_log_storage.get_asset_keys(limit=1)
    storages = [("runs", instance.run_storage), ("event log", instance.event_log_storage)]
    if instance.schedule_storage is not None:
        instance.schedule_storage.all_instigator_state()
        storages.append(("schedules", instance.schedule_storage))
    return tuple(f"{name}: {type(storage).__name__}" for name, storage in storages)
