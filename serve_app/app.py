"""``build_app(args) -> Application``: the one place that binds the Serve deployment graph.

Ingress (FastAPI; prepares query photos) → Encoder (CLIP, ``@serve.batch``) → Retriever (k-NN index), and for
video Ingress → VideoDecoder (decode, pHash dedup, shots) → Encoder → Retriever (fusion). Used by
``serve run configs/serve.yaml`` (``import_path: serve_app.app:build_app``) and by the tests.
"""

from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.deployments import Encoder, Retriever
from serve_app.ingress import Ingress
from serve_app.video_deployments import VideoDecoder


def build_app(args: dict | None = None) -> Application:
    """Bind the graph from app args (see :class:`serve_app.config.AppArgs`; ``VS_*`` env vars override).

    Raises:
        ValueError: unknown or invalid args (the message lists the valid ones).
    """
    config = AppArgs.from_args(args)
    encoder = Encoder.bind(config.model, config.dtype, config.runtime, config.encoder_threads, config.niceness)
    retriever = Retriever.bind(config.index, config.index_options(), config.niceness)
    decoder = VideoDecoder.bind(config.max_video_duration_s, config.max_video_frames, config.video_decode_timeout_s,
                                config.video_decode_memory_bytes, config.video_decode_workers)
    return Ingress.bind(encoder, retriever, decoder, config.model_dump())
