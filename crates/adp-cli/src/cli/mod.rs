//! The subcommands of the `adp` binary, one file each (its clap options and its handler), with
//! the option groups they share in [`common`].

pub mod attack;
pub mod bench;
pub mod common;
pub mod data;
pub mod eval;
pub mod interop;
pub mod peers;
pub mod reproduce;
pub mod shard;
pub mod sweep;
pub mod train;
