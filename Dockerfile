# user-monitor: multi-stage build. The builder compiles librdkafka from source (cmake); the
# runtime image holds only the binary, the event generator and the default configuration.
#
#   docker build -t user-monitor .
#   docker run --rm -p 5000:5000 user-monitor            # all-in-one, embedded broker
#   docker compose up                                     # with Apache Kafka (docker-compose.yml)

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY config config
COPY migrations migrations
COPY examples examples
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=user-monitor-target \
    cargo build --release --locked --bin user-monitor --example gen_events \
 && mkdir -p /out \
 && cp target/release/user-monitor target/release/examples/gen_events /out/

FROM debian:bookworm-slim
# curl: the compose healthcheck and the event generator.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home user-monitor \
 && mkdir -p /var/lib/user-monitor && chown user-monitor /var/lib/user-monitor
COPY --from=build /out/user-monitor /out/gen_events /usr/local/bin/
COPY config /etc/user-monitor
USER user-monitor
# The read model's SQLite file (store.data_dir): mount a volume to keep it across containers.
VOLUME /var/lib/user-monitor
ENV USER_MONITOR_CONFIG_DIR=/etc/user-monitor \
    USER_MONITOR__HTTP__LISTEN=0.0.0.0:5000 \
    USER_MONITOR__STORE__DATA_DIR=/var/lib/user-monitor
EXPOSE 5000
ENTRYPOINT ["user-monitor"]
CMD ["run"]
