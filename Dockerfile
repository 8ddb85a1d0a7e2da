# attnviz web app, CPU only.
#
#   docker build -t attnviz .
#   docker run -p 7860:7860 attnviz                                   # open http://localhost:7860
#   docker run -p 7860:7860 -e ATTNVIZ_PASSWORD=secret attnviz        # log in as "attnviz" / secret
#   docker run -p 7860:7860 -e ATTNVIZ_USER=me -e ATTNVIZ_PASSWORD=secret attnviz
#
# The model sets in weights/ at build time (the built-in set, and any set imported before building) are copied
# into the image. The password, when given, is read by app.py at start and handed to Gradio's login (auth=).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A CJK font, so that Chinese class names in figure labels are drawn instead of empty boxes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-wqy-microhei \
 && rm -rf /var/lib/apt/lists/*

# CPU-only torch first, pinned, from PyTorch's CPU wheel index: requirements.txt then finds torch satisfied
# and does not pull the multi-GB CUDA build from PyPI.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY attnviz/ attnviz/
# The package itself, for the `attnviz` command (explain, weights); its dependencies are already in.
RUN pip install --no-deps .
COPY app.py ./
COPY examples/ examples/
COPY weights/ weights/

# Everything above belongs to root and is only read: the app's user cannot change the code or the weights.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin attnviz
USER 10001
# matplotlib's font list, built once as the app's user so that the first request does not wait for it.
RUN python -c "import matplotlib.font_manager"

ENV GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    ATTNVIZ_WEIGHTS=/app/weights
EXPOSE 7860

# No curl in the slim image: Python asks for the page, bypassing any proxy. With a password set the page is
# Gradio's login page, which answers 200 as well.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=8)"]

CMD ["python", "app.py"]
