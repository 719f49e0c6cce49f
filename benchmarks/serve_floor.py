"""Ray Serve's own floor for this service's request shapes: a no-op graph with the same kind of ingress.

``build_floor_app(hops)`` binds a FastAPI ingress that parses the same request bodies as the real one
(:class:`serve_app.ingress.TextQuery` JSON; a multipart upload with form fields) and chains ``hops`` no-op
deployments the way the real ingress chains the Encoder and the Retriever (each ``DeploymentResponse`` passed
straight into the next ``.remote()``, only the last awaited), the first returning a float32 ``(1, 512)``
vector and the last a list of 10 result dicts of the real shape. What it costs over HTTP is what Ray Serve,
FastAPI and the object store cost on this machine before any model or index work: the floor the served
latency is compared with in ``query_latency.py`` and ``query_throughput.py``.
"""

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.ingress import TextQuery

# num_cpus 0: the floor graph is deployed beside the full app, which asks for all of a 2-core node's CPUs.
floor_api = FastAPI(title="Serve floor")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class NoopEncoder:
    def embed(self, payload) -> np.ndarray:
        return np.full((1, 512), 0.044, np.float32)  # the shape of a CLIP query embedding


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class NoopRetriever:
    def search(self, vector: np.ndarray) -> list[dict]:
        return [{"product_id": f"p{i}", "title": "a product", "category": "c", "brand": None, "price": 9.5,
                 "image_url": f"/img/{i}.png", "score": float(vector[0, 0])} for i in range(10)]


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
@serve.ingress(floor_api)
class FloorIngress:
    def __init__(self, stages: list[DeploymentHandle]):
        self.stages = stages

    async def _chain(self, payload):
        response = payload
        for i, stage in enumerate(self.stages):
            method = stage.search if i == len(self.stages) - 1 and len(self.stages) > 1 else stage.embed
            response = method.remote(response)
        return await response if self.stages else []

    @floor_api.post("/search/text")
    async def text(self, body: TextQuery):
        return {"results": await self._chain(body.query), "k": body.k}

    @floor_api.post("/search/image")
    async def image(self, file: UploadFile = File(...), k: int = Form(10)):
        return {"results": await self._chain(await file.read()), "k": k}


def build_floor_app(hops: int):
    """The no-op graph: the ingress, then ``hops`` chained deployments (0, 1 or 2)."""
    if hops not in (0, 1, 2):
        raise ValueError(f"hops must be 0, 1 or 2, got {hops}")
    stages = [NoopEncoder.bind(), NoopRetriever.bind()][:hops] if hops != 1 else [NoopEncoder.bind()]
    return FloorIngress.bind(stages)
