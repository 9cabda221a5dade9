"""Sharded training on CPU: the tiny model trains through the product on meshes of several
host-platform devices (XLA_FLAGS forces their count in the worker, which the child
inherits), and the run records the device count and the mesh."""

import pytest

from runs.models import Metric, RunStatus

from .test_tunix_e2e import finished, log_text, tiny_model  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.tunix, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

TRAIN = {
    "learning_rate": 0.003,
    "batch_size": 4,
    "max_seq_length": 128,
    "max_steps": 6,
    "eval_every_n_steps": 6,
    "checkpoint_every_n_steps": 6,
    "lora_rank": 8,
    "lora_alpha": 16.0,
    "seed": 7,
}


def devices_flag(count: int) -> str:
    return f"--xla_force_host_platform_device_count={count}"


def assert_trained_on(run, *, devices: int, mesh: str) -> None:
    run = finished(run.id, timeout=600)
    assert run.status == RunStatus.COMPLETED, f"{run.message}\n{log_text(run)[-3000:]}"
    losses = list(
        Metric.objects.filter(run=run, name="train/loss").order_by("step").values_list("value")
    )
    assert len(losses) >= 3 and losses[-1][0] < losses[0][0], losses
    assert run.environment["device_count"] == devices
    assert run.environment["mesh"] == mesh


def test_the_tiny_model_trains_on_fsdp_tensor_parallel_and_single_device_meshes(
    tiny_model,  # noqa: F811
    start_cluster,
    run_factory,
):
    quiet = {"JAX_PLATFORMS": "cpu", "TUNIXRT_EVALUATE_AFTER_RUN": "0"}
    four = start_cluster(workers=1, name="four", XLA_FLAGS=devices_flag(4), **quiet)
    fsdp = run_factory(mode="local", model_id=tiny_model, mesh_fsdp=4, mesh_tp=1, **TRAIN)
    both = run_factory(mode="local", model_id=tiny_model, mesh_fsdp=2, mesh_tp=2, **TRAIN)
    assert_trained_on(fsdp, devices=4, mesh="fsdp=4,tp=1")
    assert_trained_on(both, devices=4, mesh="fsdp=2,tp=2")
    four.stop()
    start_cluster(workers=1, name="one", XLA_FLAGS=devices_flag(1), **quiet)
    single = run_factory(mode="local", model_id=tiny_model, mesh_fsdp=1, mesh_tp=1, **TRAIN)
    assert_trained_on(single, devices=1, mesh="fsdp=1,tp=1")
