"""Validate, then publish: a run's periods reach ``main`` only once they passed their checks.

A dataset whose spec sets ``checks: {publish: validated}`` is written by `ValidatedWriter`: the
run writes on its own branch (``publish.<run id>``, `ref_assets.store.branches`), each commit's
periods are checked there (`ref_assets.quality`, the checks of the Dagster ``period_quality``
check) as the commit lands, and `ValidatedWriter.publish` then

1. takes the refused periods back on the branch, restoring what ``main`` held of them when the
   run began (`copy_periods` from the branch's base: an earlier version, or nothing);
2. moves ``main`` to the branch by compare-and-set; if ``main`` moved meanwhile (a sensor's
   update, another run's publish), the branch starts again from ``main``'s new tip, holding all
   that landed there (periods and annotations), and the periods this run wrote and that passed
   are copied onto it as they were checked: publishing is this run's write to ``main``, the
   later one, so its checked version wins, as the later of two commits does in direct mode.
   ``main`` so always descends from every tip it had, and runs that began from any of them can
   publish in turn. Nothing passed: the branch is discarded, and ``main`` never moves.

So no snapshot ``main`` points at holds a refused period, and a run that dies before publishing
leaves ``main`` as it was: its branch remains (`leftover_work`), and the next validated run of
the dataset discards it once its run is known to be over (`discard_leftovers`).

>>> writer = ValidatedWriter(store, spec, vocabulary, run_id="r1")  # doctest: +SKIP
>>> for batch in batches:  # doctest: +SKIP
...     writer.add(batch)
>>> outcome = writer.publish()  # doctest: +SKIP
>>> outcome.snapshot, [p.key for p in outcome.refused]  # doctest: +SKIP
('1CECHNKREP0F1RSTCMT0', ['2024-01-03'])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ref_assets.batch import PeriodBatch
from ref_assets.quality import PeriodQuality, check_stored_periods
from ref_assets.specs import DatasetSpec
from ref_assets.store.branches import (
    MainMoved,
    WorkBranch,
    copy_periods,
    discard,
    leftover_work,
    publish,
    start_work,
)
from ref_assets.store.layout import open_laid_out_root
from ref_assets.store.reader import read_records
from ref_assets.store.repository import DatasetStore
from ref_assets.store.writer import CommitPolicy, PeriodWriter, WriteReceipt
from ref_assets.vocabulary import VariableVocabulary

logger = logging.getLogger(__name__)

PURPOSE = "publish"


@dataclass(frozen=True)
class CheckedPeriod:
    """A period the run wrote on its branch, and its checks there."""

    receipt: WriteReceipt  # its snapshot is the branch commit that was checked
    quality: PeriodQuality

    @property
    def key(self) -> str:
        return self.receipt.period_key


@dataclass(frozen=True)
class ValidatedRun:
    """What a validated run did: ``main`` now points at ``snapshot`` (None: nothing passed, and
    ``main`` did not move) and holds the ``published`` periods as they were checked; the
    ``refused`` never reached it. ``kept``: the refused periods of which ``main`` holds a
    version (an earlier one, or one that landed meanwhile); it holds nothing of the others."""

    base: str | None  # main's tip when the run's branch began (None: no period was written)
    snapshot: str | None
    published: list[CheckedPeriod]
    refused: list[CheckedPeriod]
    kept: frozenset[str] = frozenset()
    replayed: list[MainMoved] = field(default_factory=list)


class ValidatedWriter:
    """Writes periods on the run's branch with batched commits (as `PeriodWriter` does on
    ``main``), checks each commit's periods there, and publishes those that pass
    (`publish`). Memory holds a commit's periods and each written period's receipt."""

    def __init__(
        self,
        store: DatasetStore,
        spec: DatasetSpec,
        vocabulary: VariableVocabulary,
        *,
        run_id: str,
        policy: CommitPolicy | None = None,
    ) -> None:
        self.store, self.spec, self.vocabulary, self.run_id = store, spec, vocabulary, run_id
        self.policy = policy
        self._work: WorkBranch | None = None
        self._writer: PeriodWriter | None = None
        self._checked: list[CheckedPeriod] = []

    def add(self, batch: PeriodBatch) -> list[CheckedPeriod]:
        """Queue ``batch``; return the periods of any commit this caused, checked on the branch."""
        if self._writer is None:
            # The branch needs a repository: a first run creates it (empty, with no layout).
            self.store.open_or_create(self.spec.manifest_split, run_id=self.run_id)
            self._work = start_work(self.store, PURPOSE, run_id=self.run_id)
            self._writer = PeriodWriter(
                self.store, run_id=self.run_id, policy=self.policy, branch=self._work.branch
            )
        return self._check(self._writer.add(batch))

    def flush(self) -> list[CheckedPeriod]:
        return self._check(self._writer.flush() if self._writer else [])

    def _check(self, receipts: list[WriteReceipt]) -> list[CheckedPeriod]:
        if not receipts:
            return []
        session = self.store.open().readonly_session(snapshot_id=receipts[-1].snapshot_id)
        keys = [receipt.period_key for receipt in receipts]
        qualities = check_stored_periods(self.spec, self.vocabulary, session, keys)
        checked = [
            CheckedPeriod(receipt, quality)
            for receipt, quality in zip(receipts, qualities, strict=True)
        ]
        self._checked += checked
        return checked

    def publish(self) -> ValidatedRun:
        """Commit what is pending, take the refused periods back, and move ``main`` to the
        branch (replaying what landed on ``main`` meanwhile); see the module docstring. On any
        failure ``main`` is untouched and the branch is discarded."""
        self.flush()
        if self._work is None:  # no period to write (every one failed to fetch)
            return ValidatedRun(None, None, [], [])
        work = self._work
        try:
            return self._publish(work)
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Give up the run's branch: nothing of it reaches ``main``."""
        if self._work is not None:
            try:
                discard(self.store, self._work.branch)
            except Exception as err:  # the failure being reported matters more; it is a leftover
                logger.warning("%s: branch %s left over: %s", self.spec.id, self._work.branch, err)
            self._work = None

    def _publish(self, work: WorkBranch) -> ValidatedRun:
        passed = [c for c in self._checked if c.quality.passed]
        refused = [c for c in self._checked if not c.quality.passed]
        if not passed:
            discard(self.store, work.branch)
            self._work = None
            return ValidatedRun(work.base, None, [], refused, self._kept(work.base, refused))
        if refused:
            keys = ", ".join(c.key for c in refused[:10]) + ("..." if len(refused) > 10 else "")
            copy_periods(
                self.store,
                self.spec,
                [c.receipt.time_index for c in refused],
                source_snapshot=work.base,
                branch=work.branch,
                message=f"{self.spec.id}: take back {len(refused)} periods that failed their "
                f"checks ({keys}; run {self.run_id})",
                run_id=self.run_id,
            )
        ours = sorted(c.receipt.time_index for c in passed)

        def rebase(moved: MainMoved) -> None:
            # The branch starts again from main's new tip, holding everything that landed there
            # (periods, annotations), and gets this run's passed periods on top: its write is
            # the later one. Main then descends from every tip it had, so a run that began from
            # one of them still finds its base when it publishes (a replay onto the old branch
            # would leave them out of main's history, and that run would fail).
            checked = self.store.open().lookup_branch(work.branch)
            with self.store.lock(run_id=self.run_id):
                self.store.open().reset_branch(work.branch, moved.tip)
            copy_periods(
                self.store,
                self.spec,
                ours,
                source_snapshot=checked,
                branch=work.branch,
                message=f"{self.spec.id}: {len(ours)} periods of run {self.run_id} that passed "
                f"their checks, onto main's {moved.tip} ({len(moved.periods)} periods landed "
                "there meanwhile)",
                run_id=self.run_id,
            )

        published = publish(work, replay=rebase, rebases=True)
        self._work = None
        return ValidatedRun(
            work.base,
            published.snapshot,
            passed,
            refused,
            self._kept(published.snapshot, refused),
            published.replayed,
        )

    def _kept(self, snapshot: str, refused: list[CheckedPeriod]) -> frozenset[str]:
        if not refused:
            return frozenset()
        session = self.store.open().readonly_session(snapshot_id=snapshot)
        if open_laid_out_root(session.store) is None:
            return frozenset()
        held = read_records(session, [c.receipt.time_index for c in refused])
        return frozenset(c.key for c in refused if c.receipt.time_index in held)


def discard_leftovers(store: DatasetStore, is_over: Callable[[str], bool]) -> list[str]:
    """Discard the branches of validated runs that died before publishing, whose run
    ``is_over(run_id)`` says is over (the Dagster face asks its instance); return them. A
    branch of a run still going is kept: deleting it would fail that run's next commit."""
    if not store.exists():
        return []
    discarded = []
    for branch in leftover_work(store, PURPOSE):
        if is_over(branch.removeprefix(f"{PURPOSE}.")):
            discard(store, branch)
            discarded.append(branch)
            logger.info("%s: discarded branch %s of a run that ended", store.dataset_id, branch)
    return discarded
