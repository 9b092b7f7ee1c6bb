//! Test harness, by concern: `netns` (a private network namespace per test and the
//! kernel's view of it), `world` (SmolVM-made state and stand-in VMMs), `pg` (a
//! throwaway PostgreSQL server), `snapshot` (the world before and after a run), `run`
//! (running the binary), `fake_vmm` (the stand-in).

pub mod fake_vmm;
pub mod netns;
pub mod pg;
pub mod run;
pub mod snapshot;
pub mod world;

pub use netns::*;
pub use run::*;
pub use world::*;
