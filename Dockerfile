# One image for every askonce process: gateway, worker and beat.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 askonce

WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY askonce ./askonce
COPY connectors ./connectors
COPY fhir_mapping ./fhir_mapping
COPY mpi ./mpi
COPY store ./store
COPY sync ./sync
COPY gateway ./gateway
RUN pip install -c requirements.lock .

USER askonce
EXPOSE 8000 2575
ENV ASKONCE_HOST=0.0.0.0 ASKONCE_PORT=8000
CMD ["askonce", "serve"]
