//! A VM's files (sockets, log, disk copy, locks, firmware) as cleanup reaches them: never
//! following a symlink it cannot trust, never outside the data and socket dirs. Rooms:
//! `roots` (the fd-held roots and the symlink rule), `remove` (unlinking beneath them),
//! `probe` (served sockets, held locks, the capabilities a removal takes).

mod probe;
mod remove;
mod roots;

pub use probe::*;
pub use remove::*;
pub use roots::*;

#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::*;
    use crate::model::FileRef;

    pub fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("smolvm-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("disks")).unwrap();
        d
    }

    /// The roots a run would hold for a test directory.
    pub fn roots_of(d: &Path) -> Roots {
        let mut roots = Roots::default();
        roots.open(d, None).unwrap();
        roots
    }

    pub fn fref(root: &Path, rel: &str) -> FileRef {
        FileRef::new(root, rel)
    }
}
