# breakglass-operator image: slim Python, non-root, no build tools in the final stage.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin breakglass
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
ENV PYTHONUNBUFFERED=1
EXPOSE 8443 9443 8080 8081
ENTRYPOINT ["breakglass-operator"]
CMD ["run"]
