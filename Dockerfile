# Image for the RayService (serving) and the RayJob (ingestion): Ray 2.60.0 on Python 3.11 with CUDA, plus this
# package and its pinned dependencies. Build and push (README "Deploying on Kubernetes"):
#   docker build -t ghcr.io/your-org/visual-search:0.1.0 .
#   docker push ghcr.io/your-org/visual-search:0.1.0
# The base tag, `rayVersion` and `image:` in k8s/*.yaml and the ray pin in pyproject.toml must agree
# (tests/test_deploy_configs.py checks them). No model weights and no credentials go into the image: the
# CLIP folder comes from a volume mounted at /models, credentials from Kubernetes secrets at run time.
FROM rayproject/ray:2.60.0-py311-gpu

# pip builds the package in its source folder, so that folder must belong to the image's user (a folder that
# WORKDIR or COPY creates may belong to root).
USER 0
RUN install -d -o 1000 -g 100 /home/ray/app
USER 1000:100
WORKDIR /home/ray/app

# PyTorch: the constraints torch==2.14.1 / torchvision==0.29.1 (a matching pair: open_clip imports torchvision)
# resolve to the default Linux wheels, which bundle CUDA: what the GPU worker groups need (CPU pods run the same
# wheels on CPU). For a CPU-only image, start from rayproject/ray:2.60.0-py311 and install that pair from
# PyTorch's CPU wheel index before this step.
COPY --chown=1000:100 pyproject.toml README.md constraints.txt ./
COPY --chown=1000:100 serve_app ./serve_app
COPY --chown=1000:100 batch_jobs ./batch_jobs
RUN pip install --no-cache-dir --constraint constraints.txt .

# Configs (the RayJob's --config points here); Serve's config travels in the RayService's serveConfigV2.
COPY --chown=1000:100 configs ./configs

# Clusters are often offline: load CLIP only from the mounted folder, never try the hub.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# Runs as the Ray image's unprivileged user `ray` (uid 1000, group `users` 100), as `ray start` expects.
USER 1000:100
