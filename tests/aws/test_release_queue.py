"""The release queue table against moto: queue, take the oldest, dispatch, cancel, and refusals that say what to do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from tenant_release.aws import release_queue
from tenant_release.aws.release_queue import QueueStatus, ReleaseQueueError

TABLE = "tenant-release-queue"
T0 = datetime(2027, 3, 1, 9, tzinfo=UTC)


@pytest.fixture
def dynamodb(moto: None):
    client = boto3.client("dynamodb", region_name="us-east-1")
    # The key schema of include/templates/tooling.yaml's QueueTable (tests/unit/test_templates.py checks the stack).
    client.create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "release", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "release", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return client


def queue(dynamodb, tag: str, *, at: datetime = T0, tenants=(), approved_by: str | None = None):
    return release_queue.enqueue(
        dynamodb, TABLE, release_tag=tag, tenants=tenants, queued_by="alice", approved_by=approved_by, now=at
    )


def test_queued_releases_come_out_oldest_first_with_what_was_recorded(dynamodb):
    queue(dynamodb, "v-1.6.0-qa", at=T0 + timedelta(minutes=5), tenants=["initech"])
    queue(dynamodb, "v1.5.0", at=T0, approved_by="bob (ui)")

    first = release_queue.next_queued(dynamodb, TABLE)
    assert first.release == "v1.5.0"
    assert (first.status, first.tenants, first.queued_by, first.approved_by) == (QueueStatus.QUEUED, (), "alice", "bob (ui)")
    assert [e.release for e in release_queue.list_queue(dynamodb, TABLE)] == ["v1.5.0", "v-1.6.0-qa"]
    assert release_queue.get(dynamodb, TABLE, "v-1.6.0-qa").tenants == ("initech",)


def test_dispatch_records_the_run_takes_the_item_off_the_queue_and_is_idempotent(dynamodb):
    queue(dynamodb, "v1.5.0")
    dispatched = release_queue.mark_dispatched(dynamodb, TABLE, "v1.5.0", run_id="queued__v1.5.0__scheduled__x")
    assert (dispatched.status, dispatched.run_id) == (QueueStatus.DISPATCHED, "queued__v1.5.0__scheduled__x")
    assert dispatched.dispatched_at
    assert release_queue.next_queued(dynamodb, TABLE) is None

    again = release_queue.mark_dispatched(dynamodb, TABLE, "v1.5.0", run_id="queued__v1.5.0__scheduled__x")
    assert again.dispatched_at == dispatched.dispatched_at  # a retry changes nothing

    with pytest.raises(ReleaseQueueError, match=r"dispatched .* to tenant_release run queued__v1\.5\.0__scheduled__x"):
        release_queue.mark_dispatched(dynamodb, TABLE, "v1.5.0", run_id="another-run")


def test_a_tag_is_queued_once_and_the_refusal_says_what_to_do(dynamodb):
    queue(dynamodb, "v1.5.0")
    with pytest.raises(ReleaseQueueError) as waiting:
        queue(dynamodb, "v1.5.0", tenants=["acme"])
    assert "v1.5.0 is queued (queued by alice" in str(waiting.value)
    assert "tenant-release queue cancel v1.5.0" in str(waiting.value)
    with pytest.raises(ReleaseQueueError, match="cancel it first"):
        release_queue.check_can_enqueue(dynamodb, TABLE, "v1.5.0")

    release_queue.mark_dispatched(dynamodb, TABLE, "v1.5.0", run_id="run-1")
    with pytest.raises(ReleaseQueueError) as shipped:
        queue(dynamodb, "v1.5.0")
    assert "dispatched" in str(shipped.value) and "run-1" in str(shipped.value)
    assert "trigger tenant_release directly, or queue a new tag" in str(shipped.value)
    assert release_queue.get(dynamodb, TABLE, "v1.5.0").status == QueueStatus.DISPATCHED  # untouched


def test_cancel_keeps_the_record_and_allows_queueing_again(dynamodb):
    queue(dynamodb, "v1.5.0")
    cancelled = release_queue.cancel(dynamodb, TABLE, "v1.5.0", cancelled_by="carol")
    assert (cancelled.status, cancelled.cancelled_by) == (QueueStatus.CANCELLED, "carol")
    assert release_queue.next_queued(dynamodb, TABLE) is None
    with pytest.raises(ReleaseQueueError, match=r"cancelled by carol .*nothing to cancel"):
        release_queue.cancel(dynamodb, TABLE, "v1.5.0", cancelled_by="carol")

    release_queue.check_can_enqueue(dynamodb, TABLE, "v1.5.0")
    requeued = queue(dynamodb, "v1.5.0", tenants=["acme"])
    assert release_queue.get(dynamodb, TABLE, "v1.5.0") == requeued


def test_cancel_refuses_unknown_and_dispatched_releases_naming_what_to_do(dynamodb):
    queue(dynamodb, "v1.5.0")
    queue(dynamodb, "v1.6.0", at=T0 + timedelta(seconds=1))
    with pytest.raises(ReleaseQueueError, match=r"v9.9.9 is not in the release queue; queued releases: v1.5.0, v1.6.0"):
        release_queue.cancel(dynamodb, TABLE, "v9.9.9", cancelled_by="carol")

    release_queue.mark_dispatched(dynamodb, TABLE, "v1.5.0", run_id="run-1")
    with pytest.raises(ReleaseQueueError, match="cannot stop it: mark that tenant_release run failed in the Airflow UI"):
        release_queue.cancel(dynamodb, TABLE, "v1.5.0", cancelled_by="carol")


def test_dispatching_a_release_cancelled_meanwhile_names_the_run_to_stop(dynamodb):
    queue(dynamodb, "v1.5.0")
    release_queue.cancel(dynamodb, TABLE, "v1.5.0", cancelled_by="carol")
    with pytest.raises(ReleaseQueueError, match="run-7 was already triggered; mark that run failed"):
        release_queue.mark_dispatched(dynamodb, TABLE, "v1.5.0", run_id="run-7")


def test_a_missing_table_says_to_run_bootstrap(moto):
    client = boto3.client("dynamodb", region_name="us-east-1")
    with pytest.raises(ReleaseQueueError, match=r"table .tenant-release-queue. does not exist .*run `tenant-release bootstrap`"):
        release_queue.next_queued(client, TABLE)
    with pytest.raises(ReleaseQueueError, match="tenant-release bootstrap"):
        queue(client, "v1.5.0")


# --- overlapping queued releases ----------------------------------------------------------------------------------


def covering(deploys: dict[str, set[str] | None]):
    """`tenants_of` for `supersessions`: which tenants each tag would deploy (None: cannot be planned)."""
    return lambda entry: None if deploys[entry.release] is None else frozenset(deploys[entry.release])


def test_a_newer_release_for_the_same_tenants_supersedes_the_older_whichever_was_queued_first(dynamodb):
    queue(dynamodb, "v1.6.0", at=T0)  # the newer version queued ahead of the older one
    queue(dynamodb, "v1.5.0", at=T0 + timedelta(minutes=1))
    queue(dynamodb, "v1.5.1", at=T0 + timedelta(minutes=2))
    waiting = release_queue.list_queue(dynamodb, TABLE, statuses=[QueueStatus.QUEUED])
    both = {"acme", "globex"}

    found = release_queue.supersessions(waiting, covering({"v1.6.0": both, "v1.5.0": both, "v1.5.1": both}))

    # Each older one names the newest release that covers it; the newest is never superseded.
    assert [(s.older.release, s.newer.release, s.tenants) for s in found] == [
        ("v1.5.0", "v1.6.0", ("acme", "globex")),
        ("v1.5.1", "v1.6.0", ("acme", "globex")),
    ]
    assert (
        found[0]
        .describe()
        .startswith(
            "v1.5.0 is superseded by v1.6.0 (queued by alice at 2027-03-01T09:00:00.000000+00:00): every tenant it would "
            "deploy (acme, globex) gets the newer version from it, so v1.5.0 does not ship"
        )
    )


def test_partial_overlaps_and_older_or_unplannable_releases_supersede_nothing(dynamodb):
    queue(dynamodb, "v1.5.0", at=T0)
    queue(dynamodb, "v1.6.0", at=T0 + timedelta(minutes=1))
    queue(dynamodb, "v-1.4.0-qa", at=T0 + timedelta(minutes=2))
    queue(dynamodb, "v1.7.0", at=T0 + timedelta(minutes=3))
    waiting = release_queue.list_queue(dynamodb, TABLE, statuses=[QueueStatus.QUEUED])
    deploys = {
        "v1.5.0": {"acme", "globex"},
        "v1.6.0": {"acme"},  # newer, but not for globex: v1.5.0 still ships (first), then v1.6.0
        "v-1.4.0-qa": {"initech"},  # another group entirely
        "v1.7.0": None,  # cannot be planned now (e.g. a tenant it names was removed): it decides nothing
    }
    found = release_queue.supersessions(waiting, covering(deploys))
    # v1.6.0 (acme) is covered by nothing newer that can be planned; v-1.4.0-qa shares no tenant with a newer one.
    assert found == []

    # A pinned tenant left out of the newer release keeps the older one alive for it.
    deploys = {"v1.5.0": {"acme", "globex"}, "v1.6.0": {"acme"}, "v-1.4.0-qa": {"initech"}, "v1.7.0": {"acme", "globex"}}
    found = release_queue.supersessions(waiting, covering(deploys))
    assert [(s.older.release, s.newer.release) for s in found] == [("v1.5.0", "v1.7.0"), ("v1.6.0", "v1.7.0")]


def test_dispatching_a_release_supersedes_the_older_ones_it_covers_and_only_those(dynamodb):
    queue(dynamodb, "v1.5.0", at=T0)
    queue(dynamodb, "v1.5.1", at=T0 + timedelta(minutes=1))
    queue(dynamodb, "v1.4.0", at=T0 + timedelta(minutes=2))
    queue(dynamodb, "v1.6.0", at=T0 + timedelta(minutes=3))
    waiting = release_queue.list_queue(dynamodb, TABLE, statuses=[QueueStatus.QUEUED])
    by_tag = {entry.release: entry for entry in waiting}
    deploys = covering(
        {"v1.5.0": {"acme", "globex"}, "v1.5.1": {"acme"}, "v1.4.0": {"acme", "initech"}, "v1.6.0": {"acme", "globex"}}
    )

    found = release_queue.superseded_by(by_tag["v1.6.0"], waiting, deploys)
    # v1.4.0 also reaches initech, which v1.6.0 does not: it still ships.
    assert [(s.older.release, s.newer.release, s.tenants) for s in found] == [
        ("v1.5.0", "v1.6.0", ("acme", "globex")),
        ("v1.5.1", "v1.6.0", ("acme",)),
    ]
    assert release_queue.superseded_by(by_tag["v1.5.1"], waiting, deploys) == []  # older versions, or not covered
    assert (
        found[0]
        .describe_waiting()
        .startswith(
            "v1.5.0 waits: the newer v1.6.0 deploys every tenant it would deploy (acme, globex) and supersedes it when v1.6.0 "
            "is dispatched; if v1.6.0 is cancelled first, v1.5.0 ships"
        )
    )


def test_a_superseded_release_leaves_the_queue_says_by_what_and_may_be_queued_again(dynamodb):
    queue(dynamodb, "v1.5.0", at=T0)
    queue(dynamodb, "v1.6.0", at=T0 + timedelta(minutes=1))
    marked = release_queue.mark_superseded(dynamodb, TABLE, "v1.5.0", by="v1.6.0", now=T0 + timedelta(hours=1))
    assert (marked.status, marked.superseded_by) == (QueueStatus.SUPERSEDED, "v1.6.0")
    assert "v1.5.0 was superseded by v1.6.0 at 2027-03-01T10:00:00.000000+00:00" in marked.describe()
    assert "it never shipped" in marked.describe()
    assert release_queue.next_queued(dynamodb, TABLE).release == "v1.6.0"

    # Repeating the same supersession (a retried dispatch) changes nothing; another one is refused with the state.
    assert release_queue.mark_superseded(dynamodb, TABLE, "v1.5.0", by="v1.6.0") == marked
    with pytest.raises(ReleaseQueueError, match=r"v1\.5\.0 was superseded by v1\.6\.0 .*not marked superseded by v1\.7\.0"):
        release_queue.mark_superseded(dynamodb, TABLE, "v1.5.0", by="v1.7.0")
    with pytest.raises(ReleaseQueueError, match=r"v9\.9\.9 is not in the release queue"):
        release_queue.mark_superseded(dynamodb, TABLE, "v9.9.9", by="v1.6.0")

    requeued = queue(dynamodb, "v1.5.0", at=T0 + timedelta(days=1))  # it never shipped: it may be queued again
    assert requeued.status == QueueStatus.QUEUED and requeued.superseded_by is None
    assert release_queue.get(dynamodb, TABLE, "v1.5.0") == requeued


def test_overlapping_releases_ship_older_version_first_and_others_in_queue_order(dynamodb):
    queue(dynamodb, "v1.6.0", at=T0, tenants=["acme"])  # queued first, but acme must get 1.5.0 before 1.6.0
    queue(dynamodb, "v-2.0.0-qa", at=T0 + timedelta(minutes=1))
    queue(dynamodb, "v1.5.0", at=T0 + timedelta(minutes=2))
    waiting = release_queue.list_queue(dynamodb, TABLE, statuses=[QueueStatus.QUEUED])
    deploys = {"v1.6.0": {"acme"}, "v-2.0.0-qa": {"initech"}, "v1.5.0": {"acme", "globex"}}

    # v1.6.0 waits for the older v1.5.0 it shares acme with; v-2.0.0-qa shares no tenant and is next in queue order.
    assert release_queue.next_to_ship(waiting, covering(deploys)).release == "v-2.0.0-qa"
    without_qa = [e for e in waiting if e.release != "v-2.0.0-qa"]
    assert release_queue.next_to_ship(without_qa, covering(deploys)).release == "v1.5.0"
    assert release_queue.next_to_ship([e for e in without_qa if e.release == "v1.6.0"], covering(deploys)).release == "v1.6.0"
    assert release_queue.next_to_ship([], covering(deploys)) is None
