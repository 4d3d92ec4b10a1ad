//! The generated gRPC code (`proto/`).
#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

pub mod storectl {
    pub mod v1 {
        tonic::include_proto!("storectl.v1");
    }
}

pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}
