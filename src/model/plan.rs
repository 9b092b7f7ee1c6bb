//! What plan makes of the inventory: the targets, in order, each with the delete ops it
//! carries, and the rows, TAPs and files to remove.

use std::collections::BTreeSet;

use super::{Elem, FileRef, Project, Refusal, Rule, Stale, Vmm};

/// A deletion the caller wants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Rule {
        family: u8,
        table: String,
        chain: String,
        handle: u64,
    },
    /// A chain, only if empty (NLM_F_NONREC: EBUSY otherwise).
    Chain { family: u8, table: String, name: String },
    /// A table; `recursive` deletes its chains and rules with it, otherwise it must be
    /// empty (NLM_F_NONREC: EBUSY otherwise).
    Table {
        family: u8,
        name: String,
        recursive: bool,
    },
    /// One element of a set or map, by the key bytes the dump gave.
    Elem {
        family: u8,
        table: String,
        set: String,
        key: Vec<u8>,
    },
    /// A set or map, only if empty (NLM_F_NONREC: EBUSY otherwise).
    Set { family: u8, table: String, name: String },
}

impl Op {
    pub fn for_elem(e: &Elem) -> Op {
        Op::Elem {
            family: e.family,
            table: e.table.clone(),
            set: e.set.clone(),
            key: e.key.clone(),
        }
    }

    pub fn for_rule(r: &Rule) -> Op {
        Op::Rule {
            family: r.family,
            table: r.table.clone(),
            chain: r.chain.clone(),
            handle: r.handle,
        }
    }
}

/// A state row to delete or mark, as it was read: its DB (index into the opened DBs),
/// id, and the stamp that proves it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    pub db: usize,
    pub id: String,
    pub updated_at: Option<String>,
}

/// A TAP to delete, as the link dump showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapRef {
    pub index: i32,
    pub name: String,
}

/// A target as apply runs it: every resource resolved to a name, handle or path, none
/// of them an index into what discovery saw.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Target {
    pub id: String,
    pub stale: Option<Stale>,
    /// Touch nothing of it: the target fails with this reason.
    pub refuse: Option<Refusal>,
    /// Its VMM and sidecar processes, stopped first.
    pub vmms: Vec<Vmm>,
    /// TAP names it owns; those not in `taps` are already gone.
    pub tap_names: Vec<String>,
    pub taps: Vec<TapRef>,
    /// Its nft rules (`Op::Rule`) and per-TAP policy tables (`Op::Table`, recursive).
    pub nft: Vec<Op>,
    pub files: Vec<FileRef>,
    pub rows: Vec<RowRef>,
    /// Rows to mark `error`/pid NULL if the target fails.
    pub marks: Vec<RowRef>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Stale VM ids, sorted (the `Reconciled stale VMs:` line).
    pub stale: Vec<String>,
    /// Targets in output order, each trimmed to what it may delete.
    pub targets: Vec<Target>,
    /// VMs (and other SmolVM things) that stay after this run if every target goes.
    pub remaining: usize,
    /// The projects those belong to: a project's shared tables stay while it has any.
    pub kept_projects: BTreeSet<Project>,
    /// Link groups in use on the host: the TAP batch delete needs one that is not.
    pub link_groups: Vec<u32>,
    pub warnings: Vec<String>,
}
