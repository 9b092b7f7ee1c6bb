//! The one integration-test binary. Every test that touches the kernel runs in its own
//! network namespace (`util::enter_netns`) and checks the world afterwards: links,
//! `nft list ruleset`, processes, files and rows, not only the exit code.

// Test code panics on purpose when the world is not what it expects.
#![allow(clippy::unwrap_used)]

mod util;

mod cleanup;
mod cli;
mod failures;
mod fixture;
mod layout;
mod operator;
mod orphans;
mod partial;
mod paths;
mod postgres;
mod releases;
mod shared_hosts;
