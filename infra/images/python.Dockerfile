# Stands in for python:3.11-slim: Debian bookworm's Python 3.11 with pip, as `python` and `pip`
# on the PATH (a venv, so `pip install` as root works as in the official image, which has no
# Debian "externally managed" marker), and ca-certificates for pip.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/*.bin \
 && python3 -m venv /usr/local/python \
 && /usr/local/python/bin/pip --version
# The host's CA bundle (empty when the host has none): pip trusts what the host trusts, so it
# reaches PyPI through a TLS-inspecting gateway too. The official image does not need this.
COPY ca-certificates.crt /usr/local/share/crunch-ca.crt
RUN if [ -s /usr/local/share/crunch-ca.crt ]; then cp /usr/local/share/crunch-ca.crt /etc/ssl/certs/ca-certificates.crt; fi \
 && rm /usr/local/share/crunch-ca.crt
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    LANG=C.UTF-8
CMD ["python3"]
