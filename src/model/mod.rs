//! The bottom of the house: plain data that flows between the stages (what discovery
//! observed, the inventory reconcile makes of it, the plan and the delete ops it carries)
//! and SmolVM's constants and name rules, which decide what SmolVM could have created.
//! Anything that fails these rules is hostile input: it is reported and never used to
//! build a path, a link name or an nft comment. Imports nothing from the crate.
//!
//! One room per layer: `names` (the projects' name rules), `observed` (what discovery
//! saw), `inventory` (what reconcile makes of it), `plan` (targets and their ops). The
//! stages import them all from here.

mod inventory;
mod names;
mod observed;
mod plan;

pub use inventory::*;
pub use names::*;
pub use observed::*;
pub use plan::*;
