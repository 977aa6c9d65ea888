//! Milvus's gRPC protocol as Rust types and a tonic service trait.
//!
//! The `.proto` files in `proto/` are vendored unchanged from
//! [milvus-io/milvus-proto](https://github.com/milvus-io/milvus-proto) at tag v2.6.17
//! (Apache-2.0; `proto/LICENSE`, `proto/ORIGIN.md`), the protocol pymilvus 2.6 speaks.
//! Generated code only: the mapping onto the engine is `magpie-server`'s `grpc` module.

#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

pub mod common {
    tonic::include_proto!("milvus.proto.common");
}
pub mod schema {
    tonic::include_proto!("milvus.proto.schema");
}
pub mod rg {
    tonic::include_proto!("milvus.proto.rg");
}
pub mod feder {
    tonic::include_proto!("milvus.proto.feder");
}
pub mod msg {
    tonic::include_proto!("milvus.proto.msg");
}
pub mod milvus {
    tonic::include_proto!("milvus.proto.milvus");
}
