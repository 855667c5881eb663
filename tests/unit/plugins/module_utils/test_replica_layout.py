"""How a node's GPUs split into replicas (_sizing.replica_layout, the filter engine_replicas), on gpu_facts of
nvidia-smi outputs recorded on real machines."""
from __future__ import annotations

import pathlib

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.autoglm.deploy.plugins.filter.engines import engine_replicas
from ansible_collections.autoglm.deploy.plugins.module_utils import _sizing

ROOT = pathlib.Path(__file__).resolve().parents[4]
NINE_B = _sizing.MODEL_DEFAULTS
THIRTY_B = dict(NINE_B, params_billion=30.0)


@pytest.fixture
def facts(run_module, smi_fixture):
    def read(machine):
        folder = smi_fixture(machine)
        result = run_module("gpu_facts", {"nvidia_smi_path": str(folder / "nvidia-smi"), "sysfs_root": str(folder / "sysfs")})
        assert result["_rc"] == 0, result
        return result["gpu_facts"]
    return read


def cards(count, mib):
    return {"usable": True, "gpus": [{"uuid": "GPU-%d" % i, "memory_total_mib": mib} for i in range(count)]}


def test_preflight_sizes_the_same_default_model():
    defaults = yaml.safe_load((ROOT / "roles/preflight/defaults/main.yml").read_text())
    for key in ("params_billion", "dtype", "kv_cache_dtype", "num_layers", "num_kv_heads", "head_dim"):
        assert NINE_B[key] == defaults["preflight_model_" + key], key
    assert NINE_B["overhead_gib"] == defaults["preflight_runtime_overhead_gib"]
    service = yaml.safe_load((ROOT / "roles/inference_service/defaults/main.yml").read_text())
    assert NINE_B["context_length"] == service["inference_service_max_model_len"]


def test_a_9b_model_on_eight_h100s_is_eight_replicas_of_one_gpu(facts):
    h100 = facts("h100-sxm-8gpu")
    layout = _sizing.replica_layout(h100, NINE_B)
    assert layout["tensor_parallel_size"] == 1 and layout["fits"] is True
    assert layout["gpus"] == [[gpu["uuid"]] for gpu in h100["gpus"]]


def test_tensor_parallel_is_the_smallest_power_of_two_that_fits():
    # 30B in BF16 is 55.9 GiB of weights: 4 x 24 GB cards hold it (about 17.8 GiB each), 2 do not.
    layout = _sizing.replica_layout(cards(8, 24564), THIRTY_B)
    assert layout["tensor_parallel_size"] == 4
    assert layout["gpus"] == [["GPU-0", "GPU-1", "GPU-2", "GPU-3"], ["GPU-4", "GPU-5", "GPU-6", "GPU-7"]]
    # The 9B model needs 25.2 GiB at TP 1: on 24 GB cards it takes two per replica.
    assert _sizing.replica_layout(cards(8, 24564), NINE_B)["gpus"] == [["GPU-%d" % i, "GPU-%d" % (i + 1)] for i in range(0, 8, 2)]


def test_gpus_left_over_from_the_last_group_stay_idle():
    layout = _sizing.replica_layout(cards(3, 24564), NINE_B)
    assert layout["tensor_parallel_size"] == 2 and layout["gpus"] == [["GPU-0", "GPU-1"]]


def test_mig_instances_are_replicas_of_their_own_when_they_hold_the_model(facts):
    mig = facts("a100-mig")
    whole = [gpu["uuid"] for gpu in mig["gpus"] if not gpu["mig_devices"]]
    big_slice = [dev["uuid"] for gpu in mig["gpus"] for dev in gpu["mig_devices"] if dev["profile"] == "3g.40gb"]
    layout = _sizing.replica_layout(mig, NINE_B)
    # 25.2 GiB: the whole A100 and the 3g.40gb instance hold it, the 2g.20gb and 1g.10gb ones do not.
    assert layout["tensor_parallel_size"] == 1
    assert layout["gpus"] == [whole, big_slice]


def test_the_operator_asks_for_fewer_replicas_or_another_tensor_parallel(facts):
    h100 = facts("h100-sxm-8gpu")
    assert len(_sizing.replica_layout(h100, NINE_B, replicas=3)["gpus"]) == 3
    layout = _sizing.replica_layout(h100, NINE_B, tensor_parallel_size=8)
    assert layout["tensor_parallel_size"] == 8 and layout["gpus"] == [[gpu["uuid"] for gpu in h100["gpus"]]]


def test_more_replicas_than_fit_is_refused_with_the_numbers(facts):
    refusal = (r"9 replicas at tensor parallel 1 asked, but this node has 8 GPU group\(s\) that hold the model "
               r"\(25.2 GiB per GPU\); ask for at most 8")
    with pytest.raises(_sizing.LayoutError, match=refusal):
        _sizing.replica_layout(facts("h100-sxm-8gpu"), NINE_B, replicas=9)
    with pytest.raises(_sizing.LayoutError, match="at least 1"):
        _sizing.replica_layout(cards(1, 81559), NINE_B, replicas=-1)


def test_a_model_that_fits_no_group_runs_once_over_every_gpu(facts):
    layout = _sizing.replica_layout(facts("rtx4090-1gpu"), NINE_B)
    assert layout["fits"] is False and layout["tensor_parallel_size"] == 1 and len(layout["gpus"]) == 1


def test_a_node_without_usable_gpus_runs_one_replica_unless_told(facts):
    none = facts("driver-not-loaded")
    assert _sizing.replica_layout(none, NINE_B) == {"tensor_parallel_size": 1, "gpus": [[]], "fits": True}
    assert _sizing.replica_layout(none, NINE_B, tensor_parallel_size=2, replicas=2)["gpus"] == [[], []]


def test_engine_replicas_names_each_replica_by_its_port(facts):
    hostvars = {
        "node1": {"ansible_facts": {"gpu_facts": facts("h100-sxm-8gpu")}, "ansible_host": "10.0.0.1",
                  "inference_service_replicas": 2, "inference_service_port": 9000},
        "node2": {"ansible_facts": {"gpu_facts": facts("driver-not-loaded")}, "autoglm_backend": "transformers"},
    }
    replicas = engine_replicas(["node2", "node1"], hostvars, "vllm", 8000)
    assert [(r["server"], r["address"], r["port"], r["backend"], len(r["gpus"])) for r in replicas] == [
        ("node1:9000", "10.0.0.1", 9000, "vllm", 1), ("node1:9001", "10.0.0.1", 9001, "vllm", 1),
        ("node2:8000", "node2", 8000, "transformers", 0)]
    # The node's own role passes what its play sets, unset (None) included; what it does not pass is the inventory's.
    mine = engine_replicas(["node1"], hostvars, "vllm", 8000, {"node1": {"inference_service_replicas": 4}})
    assert [r["server"] for r in mine] == ["node1:9000", "node1:9001", "node1:9002", "node1:9003"]
    unset = engine_replicas(["node1"], hostvars, "vllm", 8000,
                            {"node1": {"inference_service_replicas": None, "inference_service_port": None}})
    assert [r["server"] for r in unset] == ["node1:%d" % port for port in range(8000, 8008)]


def test_engine_replicas_refuses_a_host_without_gpu_facts_or_a_layout_that_does_not_fit(facts):
    with pytest.raises(AnsibleFilterError, match="no GPU facts for node1"):
        engine_replicas(["node1"], {"node1": {}}, "vllm", 8000)
    hostvars = {"node1": {"ansible_facts": {"gpu_facts": facts("h100-sxm-8gpu")}, "inference_service_replicas": 9}}
    with pytest.raises(AnsibleFilterError, match=r"^node1 \(inference_service_replicas, .*ask for at most 8"):
        engine_replicas(["node1"], hostvars, "vllm", 8000)
