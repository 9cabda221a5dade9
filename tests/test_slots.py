"""Slots own devices and work goes to a free slot: real qcluster workers, real children."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from runs import services, slots
from runs.models import RunStatus, TunixRun, WorkerHost
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PROBE = str(Path(__file__).parent / "programs" / "slot_probe.py")


def probe_command(release: Path) -> list[str]:
    return [sys.executable, PROBE, str(release)]


def slot_env(run) -> dict:
    text = "".join(run.log_chunks.order_by("seq").values_list("text", flat=True))
    line = next(line for line in text.splitlines() if line.startswith("slot-env "))
    return json.loads(line.removeprefix("slot-env "))


def status_of(run) -> str:
    run.refresh_from_db()
    return run.status


def started(run) -> bool:
    run.refresh_from_db()
    return run.status == RunStatus.RUNNING and "slot-env" in "".join(
        run.log_chunks.values_list("text", flat=True)
    )


def test_slot_environment_gives_a_slot_its_devices_or_shares_memory(settings):
    settings.SLOTS = [["0", "1"], ["2", "3"]]
    env = slots.slot_environment(slots.host_slots()[1])
    assert env["CUDA_VISIBLE_DEVICES"] == env["TPU_VISIBLE_CHIPS"] == "2,3"
    assert env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,2,1" and env["TPU_PROCESS_PORT"] == "8477"
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in env  # nobody else sees these devices
    settings.SLOTS = [[], []]
    env = slots.slot_environment(slots.host_slots()[0])
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    settings.SLOTS = [[]]
    assert slots.slot_environment(slots.host_slots()[0]) == {}


def test_two_runs_on_two_slots_get_disjoint_devices_and_slots_free_however_runs_end(
    start_cluster, run_factory, tmp_path
):
    cluster = start_cluster(
        workers=2, name="slots", TUNIXRT_HOST_NAME="slot-host", TUNIXRT_SLOTS="0,1;2,3"
    )
    release = [tmp_path / f"release-{i}" for i in range(4)]
    first, second = (run_factory(mode="local", command=probe_command(r)) for r in release[:2])
    wait_for(lambda: started(first) and started(second), timeout=60, message="both running")
    envs = [slot_env(first), slot_env(second)]
    assert {e["CUDA_VISIBLE_DEVICES"] for e in envs} == {"0,1", "2,3"}
    assert {e["TPU_VISIBLE_CHIPS"] for e in envs} == {"0,1", "2,3"}
    assert {first.worker_slot, second.worker_slot} == {0, 1}
    assert first.devices == slot_env(first)["CUDA_VISIBLE_DEVICES"]
    assert first.environment["host"] == "slot-host"
    host = WorkerHost.objects.get(name="slot-host")
    assert host.slots == [["0", "1"], ["2", "3"]]

    # Both slots busy: a third run waits, and starts on the slot the first frees (completed).
    third = run_factory(mode="local", command=probe_command(release[2]))
    time.sleep(1.5)  # a few idle polls: nothing may start it on a busy host
    assert status_of(third) == RunStatus.PENDING
    release[0].write_text("go")
    wait_for(lambda: started(third), timeout=30, message="third run on the freed slot")
    assert status_of(first) == RunStatus.COMPLETED
    assert third.worker_slot == first.worker_slot
    assert slot_env(third)["CUDA_VISIBLE_DEVICES"] == first.devices

    # Cancelled: its slot is free again.
    fourth = run_factory(mode="local", command=probe_command(release[3]))
    services.run_cancel(run=TunixRun.objects.get(id=second.id))
    wait_for(lambda: started(fourth), timeout=30, message="fourth run on the cancelled slot")
    assert status_of(second) == RunStatus.CANCELLED
    assert fourth.worker_slot == second.worker_slot

    # Worker killed: the run is lost and its slot is free again for a fifth run.
    fifth = run_factory(mode="local", command=probe_command(tmp_path / "release-5"))
    third.refresh_from_db()
    supervisor = psutil.Process(third.pid).parent()
    assert supervisor.pid in cluster.worker_pids()
    os.kill(supervisor.pid, signal.SIGKILL)
    wait_for(lambda: status_of(third) == RunStatus.FAILED, timeout=30, message="third reaped")
    assert "Worker lost" in third.message
    wait_for(lambda: started(fifth), timeout=60, message="fifth run on the lost run's slot")
    assert fifth.worker_slot == third.worker_slot
    for path in (release[3], tmp_path / "release-5"):
        path.write_text("go")
    wait_for(lambda: status_of(fourth) == status_of(fifth) == RunStatus.COMPLETED, timeout=30)


def test_runs_submitted_at_once_start_on_every_free_slot_across_hosts_and_a_dead_host_keeps_none(
    start_cluster, run_factory, tmp_path
):
    host_a = start_cluster(workers=2, name="a", TUNIXRT_HOST_NAME="host-a", TUNIXRT_SLOTS="0;1")
    start_cluster(workers=2, name="b", TUNIXRT_HOST_NAME="host-b", TUNIXRT_SLOTS="0;1")
    wait_for(lambda: WorkerHost.objects.count() == 2, timeout=30, message="both hosts beat")
    release = tmp_path / "release"
    runs = [run_factory(mode="local", command=probe_command(release)) for _ in range(4)]
    wait_for(lambda: all(started(r) for r in runs), timeout=30, message="4 runs on 4 slots")
    waits = [(r.started_at - r.created_at).total_seconds() for r in runs]
    print(f"submit-to-running seconds on 4 free slots across 2 hosts: {waits}")
    assert max(waits) < 5, waits
    assert sorted(r.worker_host for r in runs) == ["host-a", "host-a", "host-b", "host-b"]

    # Every slot busy: two more wait in the table, not in any host's hands. host-a dies
    # (its cluster and children killed); host-b starts both once its runs end.
    queued = [run_factory(mode="local", command=probe_command(release)) for _ in range(2)]
    os.killpg(host_a.proc.pid, signal.SIGKILL)
    mine = [r for r in runs if r.worker_host == "host-b"]
    lost = [r for r in runs if r.worker_host == "host-a"]
    wait_for(
        lambda: all(status_of(r) == RunStatus.FAILED for r in lost),
        timeout=60,
        message="host-a's runs reaped by host-b",
    )
    assert all(status_of(r) == RunStatus.PENDING for r in queued)
    release.write_text("go")
    for run in mine + queued:
        wait_for(lambda run=run: status_of(run) == RunStatus.COMPLETED, timeout=60)
    assert {r.worker_host for r in queued} == {"host-b"}


def test_a_mesh_no_host_has_a_slot_for_is_refused_by_the_form_and_the_dry_run(
    run_factory, client, user
):
    from django.utils import timezone

    from runs.errors import InvalidInput

    run_factory(mesh_fsdp=8)  # no host known yet: nothing to check against
    WorkerHost.objects.create(
        name="gpu-1",
        queue="q",
        slots=[["0", "1", "2", "3"], ["4", "5", "6", "7"]],
        heartbeat_at=timezone.now(),
    )
    with pytest.raises(InvalidInput) as err:
        run_factory(mesh_fsdp=8)
    assert "No worker host has a slot of 8 devices" in err.value.fields["mesh_fsdp"]
    with pytest.raises(InvalidInput) as err:
        run_factory(mesh_tp=3)
    assert "tensor parallelism 3" in err.value.fields["mesh_fsdp"]
    assert run_factory(mesh_fsdp=2, mesh_tp=2).status == RunStatus.COMPLETED
    client.force_login(user)
    page = client.post("/runs/new/", {"mesh_fsdp": "8", "mesh_tp": "1"})
    assert "No worker host has a slot of 8 devices" in page.content.decode()


@pytest.mark.tunix
def test_the_device_probe_reports_kind_count_and_memory(settings):
    services.host_beat()
    found = services.host_probe_devices()
    assert found["platform"] == "cpu" and found["count"] >= 1 and found["kind"], found
    assert WorkerHost.objects.get(name=settings.HOST_NAME).accelerators == found
