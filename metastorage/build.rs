//! Generates the etcd v3 gRPC server code from `proto/` with `protox` (a pure-Rust protobuf
//! compiler): building the crate needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["etcdserverpb/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
