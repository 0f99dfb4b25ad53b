"""The cluster path: a two-node Ray cluster on this machine (ray.cluster_utils.Cluster, head + worker, both on
127.0.0.1), `wanrt serve`'s application joined to it by address, one engine replica per node."""

import json
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.serve_helpers import free_port, png_bytes, ray_log_tails, set_ray_env
from tests.test_runtime_serve import _ray_children, kill_leftovers

set_ray_env()  # before Ray is imported
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="module")
def cluster_server(serve_artifacts, tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    from wanrt.runtime.serving import ray_app
    from wanrt.runtime.serving.bundle import load_catalog
    from wanrt.runtime.serving.limits import Limits

    before, ray_dir, cluster = _ray_children(), set_ray_env(), None
    try:
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        except RuntimeError as e:  # Ray's own message names only the port file it waited for
            raise RuntimeError(f"{e}\n{ray_log_tails(ray_dir)}") from e
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        port = free_port()
        info = ray_app.start_ray(cluster.address, "127.0.0.1", port)
        assert info["nodes"] == 2
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}  # loopback only
        catalog = load_catalog(serve_artifacts["bundle"])
        replicas = ray_app.ReplicaSpec(min_replicas=2, max_replicas=2, num_cpus=1, threads=1,
                                       max_replicas_per_node=1)
        app = ray_app.build_application(catalog, Limits(), replicas, str(tmp_path_factory.mktemp("cluster-store")),
                                        3600.0, None, poll_after_ms=200, graceful_shutdown_s=2.0)
        ray_app.run_application(app)
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_leftovers(before, ray_dir, cluster)


def test_jobs_run_on_both_nodes(cluster_server):
    client = openai.OpenAI(base_url=cluster_server + "/v1", api_key="unused", max_retries=0, timeout=120)

    def one(i):
        lora = ("style-a", "sep")[i % 2]  # two LoRAs interleaved: one engine per replica, no thrashing
        return client.videos.create_and_poll(prompt=f"job {i}", model="wan-tiny", size="32x32",
                                             input_reference=("in.png", png_bytes(), "image/png"),
                                             extra_body={"lora": lora, "steps": 1, "seed": i})

    with ThreadPoolExecutor(4) as pool:
        videos = list(pool.map(one, range(6)))
    assert [v.status for v in videos] == ["completed"] * 6
    nodes = {v.model_extra["wanrt"]["replica"]["node"] for v in videos}
    assert len(nodes) == 2  # both nodes' replicas served jobs
    health = json.loads(urllib.request.urlopen(cluster_server + "/healthz", timeout=10).read())
    assert health["slots"] == 2 and health["queue_depth"] == 0
