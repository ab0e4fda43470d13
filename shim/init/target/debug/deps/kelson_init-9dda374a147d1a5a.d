/work/main/shim/init/target/debug/deps/kelson_init-9dda374a147d1a5a.d: src/main.rs Cargo.toml

/work/main/shim/init/target/debug/deps/libkelson_init-9dda374a147d1a5a.rmeta: src/main.rs Cargo.toml

src/main.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
