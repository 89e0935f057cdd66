# checkout-gateway container image.
#
#   docker build -t checkout-gateway:dev .
#   docker run --rm -p 8080:8080 checkout-gateway:dev --demo   # sandbox providers, no keys
#   docker run --rm -p 8080:8080 -e DHMAD_API_KEY=... -e DODO_PAYMENTS_API_KEY=... checkout-gateway:dev
#
# Both stages use Debian 12 (bookworm), so the binary links against the same glibc it runs on.
# TLS roots are compiled into the binary: the final image needs no CA bundle.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /build

# Dependencies get their own layer: build them against stand-in sources, so that a change
# under src/ reuses this layer and only recompiles the crate itself. The layer is rebuilt
# only when Cargo.toml or Cargo.lock change.
# If Cargo.toml ever names a target by path ([[bench]], [[test]], [[example]], build.rs),
# cargo wants that file to exist even here: add a stand-in for it in this RUN and COPY the
# real one below.
COPY Cargo.toml Cargo.lock ./
# async-graphql, patched (vendor/async-graphql/PATCHED.md): a dependency like the others.
COPY vendor ./vendor
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. COPY keeps their (older) modification times, so touch them: otherwise
# cargo would take the stand-in build above as up to date and ship an empty binary.
COPY src ./src
# GraphiQL's scripts and styles, embedded in the binary (include_bytes!).
COPY assets ./assets
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked

# ---- runtime --------------------------------------------------------------------------------
# distroless "cc": glibc and libgcc, no shell, no package manager; the :nonroot tag runs
# as UID/GID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /build/target/release/checkout-gateway /usr/local/bin/checkout-gateway
USER 65532:65532
ENV GATEWAY_LISTEN=0.0.0.0:8080
# The allocator (mimalloc) keeps transparent huge pages off for this process even on nodes
# where THP is "always": with them an idle pod's resident size grows by whole 2 MiB pages.
ENV MIMALLOC_ALLOW_THP=0
EXPOSE 8080
# No arguments: serve. Append `--demo` to `docker run` for the built-in sandbox providers.
ENTRYPOINT ["/usr/local/bin/checkout-gateway"]
