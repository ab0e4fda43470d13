//! kelson: a native Kubernetes CRI runtime. This crate is `kelsond`: the CRI edge, the image
//! service, the store. No `unsafe` here: raw syscalls live in their own crate.
#![forbid(unsafe_code)]

pub mod config;
pub mod container;
pub mod cri;
pub mod dirs;
pub mod ids;
pub mod image;
pub mod network;
pub mod pod;
pub mod rollback;
pub mod server;
pub mod shim;
pub mod store;
