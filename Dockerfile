# visibuild-import for nightly runs (cron, systemd, Kubernetes): a release build in a
# builder image, copied into a small Debian image that runs as a non-root user.
#
#   docker build -t visibuild-import .
#   docker run --rm --env-file /etc/visibuild-import/env -v /srv/defects:/data:ro \
#       -v visibuild-state:/var/lib/visibuild-import visibuild-import \
#       import /data/defects.csv --region au --summary-json /var/lib/visibuild-import/last-run.json

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Dependencies first, so that a change to the sources does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY patches patches
COPY crates/sandbox/Cargo.toml crates/sandbox/
COPY crates/queue/Cargo.toml crates/queue/
RUN mkdir -p src benches crates/sandbox/src crates/queue/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs crates/sandbox/src/lib.rs crates/queue/src/lib.rs \
    && for b in queue hash baseline; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked \
    && rm -rf src benches crates/sandbox/src crates/queue/src
COPY . .
# The placeholder build left newer artefacts: make cargo see the real sources as changed.
RUN touch src/main.rs src/lib.rs crates/sandbox/src/lib.rs crates/queue/src/lib.rs \
    && cargo build --release --locked --bin visibuild-import

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/visibuild-import --create-home \
        --shell /usr/sbin/nologin visibuild
COPY --from=builder /src/target/release/visibuild-import /usr/local/bin/visibuild-import
USER visibuild
WORKDIR /var/lib/visibuild-import
# State (summaries, reports, the default embedded store's folder) lives here.
ENV XDG_STATE_HOME=/var/lib/visibuild-import
VOLUME ["/var/lib/visibuild-import"]
ENTRYPOINT ["visibuild-import"]
CMD ["--help"]
