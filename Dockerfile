FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY config ./config
RUN pip install --no-cache-dir -e .
RUN useradd --create-home newsworker && mkdir -p /app/var && chown newsworker /app/var
USER newsworker
CMD ["newsworker", "worker"]
