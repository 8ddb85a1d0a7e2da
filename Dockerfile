# attnviz web app, CPU only.
#
#   docker build -t attnviz .
#   docker run -p 7860:7860 attnviz                                   # open http://localhost:7860
#   docker run -p 7860:7860 -e ATTNVIZ_PASSWORD=secret attnviz        # log in as "attnviz" / secret
#   docker run -p 7860:7860 -e ATTNVIZ_USER=me -e ATTNVIZ_PASSWORD=secret attnviz
#
# The model sets in weights/ at build time (the built-in set, and any set imported before building) are copied
# into the image. The password, when given, is read by app.py at start and handed to Gradio's login (auth=).
#
# Build arguments (scripts/image.sh uses them to build without a container registry, with buildah):
#   BASE_IMAGE       any Debian-like image with python3 (3.11) and its venv module: python:3.11-slim by default,
#                    or a debootstrap'ed Debian bookworm imported locally.
#   TORCH_INDEX_URL  where torch and torchvision come from: PyTorch's CPU wheels by default; PyPI's index gives
#                    the (much larger) CUDA build, which runs on the CPU as well.
# pip's own settings (a certificate bundle, a mirror) can be handed to the build as secrets, never stored in
# the image: --secret id=pipconf,src=pip.conf (read as PIP_CONFIG_FILE) and --secret id=pipcert,src=ca.crt.
ARG BASE_IMAGE=python:3.11-slim

# The files the app serves, with their modes set here. A checkout made with umask 002 has group-writable files,
# and a uid without an entry in /etc/passwd (`docker run --user 1000`; Hugging Face Spaces run images as uid 1000)
# runs in group 0, root's: copied as they are, the code and the weights would be writable by the app. Only this
# stage's result goes into the image.
FROM ${BASE_IMAGE} AS files
COPY pyproject.toml README.md app.py /files/
COPY attnviz/ /files/attnviz/
COPY weights/ /files/weights/
RUN chmod -R u=rwX,go=rX /files

FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LANG=C.UTF-8

# A CJK font, so that Chinese class names in figure labels are drawn instead of empty boxes.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fonts-wqy-microhei \
 && rm -rf /var/lib/apt/lists/*

# Everything Python goes into a venv: it works the same on python:3.11-slim and on a plain Debian python3
# (which has no pip of its own).
RUN python3 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# CPU-only torch first, pinned, from PyTorch's CPU wheel index: requirements.txt then finds torch satisfied
# and does not pull the multi-GB CUDA build from PyPI.
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipcert \
    if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
 && pip install torch==2.14.1 torchvision==0.29.1 --index-url "$TORCH_INDEX_URL"

WORKDIR /app
COPY requirements.txt ./
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipcert \
    if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
 && pip install -r requirements.txt \
 && chmod 644 requirements.txt

# The app's user, and the places it writes to. Hugging Face Spaces run the image as uid 1000, not as this user,
# so HOME, matplotlib's cache and Gradio's temporary files are fixed paths that any uid may write to (sticky,
# like /tmp), never "the home of whoever runs it". matplotlib's font list is built here, once, so that the
# first request does not wait for it.
ENV HOME=/home/attnviz \
    MPLCONFIGDIR=/var/cache/attnviz/matplotlib \
    GRADIO_TEMP_DIR=/tmp/gradio
RUN useradd --no-create-home --home-dir /home/attnviz --uid 10001 --user-group --shell /usr/sbin/nologin attnviz \
 && install -d -m 1777 /home/attnviz /var/cache/attnviz /var/cache/attnviz/matplotlib \
 && python -c "import matplotlib.font_manager"

COPY --from=files /files/pyproject.toml /files/README.md ./
COPY --from=files /files/attnviz/ attnviz/
# The package itself, for the `attnviz` command (explain, weights); its dependencies are already in.
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipcert \
    if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
 && pip install --no-deps . \
 && rm -rf build *.egg-info
COPY --from=files /files/app.py ./
COPY --from=files /files/weights/ weights/

# Optional: the three published ImageNet models (ResNet50, +SE, +CBAM; about 300 MB) imported at build time, so
# that a server or a Space with internet serves photos out of the box:
#   --build-arg IMAGENET=download   downloads them through their publishers' libraries (timm and pytorchcv are
#                                   installed for it) while building;
#   --build-arg IMAGENET=DIR        imports the three files downloaded by hand into DIR, a folder of the build
#                                   context (`python -m attnviz.weights import imagenet --files DIR`), e.g. for a
#                                   build without internet.
#   --build-arg IMAGENET_TORCHVISION=V2  torchvision's V2 weights instead of V1 (with DIR: which release a file
#                                   holds, when its hash does not tell).
# The libraries' caches are removed afterwards; the set is read-only in the image like the built-in one.
ARG IMAGENET=""
ARG IMAGENET_TORCHVISION=""
RUN --mount=type=bind,target=/context --mount=type=secret,id=pipconf --mount=type=secret,id=pipcert \
    if [ -n "$IMAGENET" ]; then \
      if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
      && pip install "timm>=1.0" "pytorchcv>=0.0.70" \
      && export TORCH_HOME=/tmp/imagenet-cache/torch HF_HOME=/tmp/imagenet-cache/hf \
      && if [ "$IMAGENET" = download ]; then \
           python -m attnviz.weights import imagenet --weights-dir weights \
             ${IMAGENET_TORCHVISION:+--torchvision-weights "$IMAGENET_TORCHVISION"}; \
         else \
           python -m attnviz.weights import imagenet --weights-dir weights --files "/context/$IMAGENET" \
             ${IMAGENET_TORCHVISION:+--torchvision-weights "$IMAGENET_TORCHVISION"}; \
         fi \
      && rm -rf /tmp/imagenet-cache && chmod -R u=rwX,go=rX weights; \
    fi

# Everything above belongs to root and is only read: the app's user cannot change the code or the weights.
USER 10001

ENV GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    ATTNVIZ_WEIGHTS=/app/weights
EXPOSE 7860

# No curl in the image: Python asks for the page, bypassing any proxy. With a password set the page is
# Gradio's login page, which answers 200 as well.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=8)"]

CMD ["python", "app.py"]
