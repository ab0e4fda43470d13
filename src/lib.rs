//! kelson: a native Kubernetes CRI runtime. This crate is `kelsond`: the CRI edge, the image
//! service, the store. `unsafe` is denied everywhere but `sys` (allocator tuning); system
//! calls go through nix.
#![deny(unsafe_code)] // allowed only in sys.rs

pub mod cgroups;
pub mod config;
pub mod container;
pub mod cri;
pub mod cri_socket;
pub mod digest;
pub mod dirs;
pub mod ids;
pub mod image;
pub mod network;
pub mod notify;
pub mod owner_only;
pub mod pod;
pub mod reference;
pub mod rollback;
pub mod sealed_binary;
pub mod security;
pub mod shim_client;
pub mod stats;
pub mod store;
pub mod streaming;
pub mod sys;
pub mod telemetry;
