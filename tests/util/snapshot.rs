//! Snapshots of the world a run could change (files with their bytes, the ruleset, the
//! links, the stand-in VMMs), to compare before and after a run.

use std::collections::BTreeMap;
use std::path::Path;

use super::netns::{ruleset, sh};
use super::world::World;

/// The world as a run could change it.
#[derive(PartialEq)]
pub struct Snapshot {
    pub files: BTreeMap<String, Vec<u8>>,
    pub ruleset: String,
    pub links: String,
    pub live: BTreeMap<String, bool>,
}

impl Snapshot {
    /// Panics naming what differs (files by name, not by their bytes).
    #[track_caller]
    pub fn assert_same(&self, before: &Snapshot) {
        let changed: Vec<&String> = self
            .files
            .keys()
            .chain(before.files.keys())
            .filter(|k| self.files.get(*k) != before.files.get(*k))
            .collect();
        assert!(changed.is_empty(), "files changed: {changed:?}");
        assert_eq!(self.ruleset, before.ruleset, "nft ruleset changed");
        assert_eq!(self.links, before.links, "links changed");
        assert_eq!(self.live, before.live, "VMM processes changed");
    }
}

impl World {
    /// Files under the data and socket dirs, relative, with their contents.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                let ft = e.file_type().unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if ft.is_dir() {
                    out.insert(format!("{rel}/"), Vec::new());
                    walk(root, &p, out);
                } else if ft.is_file() {
                    out.insert(rel, std::fs::read(&p).unwrap());
                } else {
                    out.insert(rel, b"<special>".to_vec());
                }
            }
        }
        walk(&self.scratch.0, &self.scratch.0, &mut out);
        // The data dir sits at state/smolvm (for SmolVM's own resolution): named data/.
        out.remove("state/");
        out.into_iter()
            .map(|(k, v)| match k.strip_prefix("state/smolvm") {
                Some(rest) => (format!("data{rest}"), v),
                None => (k, v),
            })
            .collect()
    }

    pub fn snapshot(&mut self) -> Snapshot {
        Snapshot {
            files: self.files(),
            ruleset: ruleset(),
            links: sh("ip -d link show"),
            live: self
                .vmms
                .iter_mut()
                .map(|(id, c)| (id.clone(), c.try_wait().unwrap().is_none()))
                .collect(),
        }
    }
}
