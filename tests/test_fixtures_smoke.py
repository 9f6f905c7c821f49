import urllib.request


def test_mlflow_server_answers(mlflow_server):
    with urllib.request.urlopen(mlflow_server + "/health", timeout=5) as r:
        assert r.status == 200


def test_ray_has_two_nodes(ray_two_nodes):
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2
    assert ray.cluster_resources().get("node_b") == 1
