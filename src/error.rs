//! The one error type: what we were doing (`action`) and why it failed (`cause`).
//!
//! The raw errno is kept so the text a user reads is `Permission denied: cannot delete TAP
//! device tap3`: the errno's meaning, then what we could not do.

use std::fmt;

#[derive(Debug)]
pub enum Cause {
    /// A kernel error number (positive).
    Errno(i32),
    /// SQLite said no.
    Db(rusqlite::Error),
    /// Anything else, already phrased for a user.
    Msg(String),
}

#[derive(Debug)]
pub struct Error {
    /// What we were trying to do, phrased to follow "cannot": `delete TAP device tap3`.
    pub action: String,
    pub cause: Cause,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn errno(action: impl Into<String>, errno: i32) -> Error {
        Error {
            action: action.into(),
            cause: Cause::Errno(errno),
        }
    }

    pub fn db(action: impl Into<String>, err: rusqlite::Error) -> Error {
        Error {
            action: action.into(),
            cause: Cause::Db(err),
        }
    }

    pub fn msg(action: impl Into<String>, msg: impl Into<String>) -> Error {
        Error {
            action: action.into(),
            cause: Cause::Msg(msg.into()),
        }
    }
}

impl From<rustix::io::Errno> for Cause {
    fn from(e: rustix::io::Errno) -> Cause {
        Cause::Errno(e.raw_os_error())
    }
}

/// strerror without the libc call; EPERM and EACCES both read "Permission denied",
/// which is what an operator needs to know (run as root / with CAP_NET_ADMIN).
pub fn errno_text(errno: i32) -> String {
    match errno {
        libc::EPERM | libc::EACCES => "Permission denied".to_string(),
        _ => {
            let full = std::io::Error::from_raw_os_error(errno).to_string();
            match full.find(" (os error") {
                Some(i) => full[..i].to_string(),
                None => full,
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Errno(e) => write!(f, "{}: cannot {}", errno_text(*e), self.action),
            Cause::Db(e) => write!(f, "cannot {}: {}", self.action, db_text(e)),
            Cause::Msg(m) => write!(f, "cannot {}: {}", self.action, m),
        }
    }
}

fn db_text(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(code, Some(msg)) => format!("{msg} ({:?})", code.code),
        rusqlite::Error::SqliteFailure(code, None) => format!("{:?}", code.code),
        other => other.to_string(),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Db(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_text_matches_contract() {
        let e = Error::errno("delete TAP device tap3", libc::EPERM);
        assert_eq!(e.to_string(), "Permission denied: cannot delete TAP device tap3");
    }

    #[test]
    fn other_errnos_read_like_strerror() {
        assert_eq!(
            Error::errno("delete nft rules", libc::EBUSY).to_string(),
            "Device or resource busy: cannot delete nft rules"
        );
    }
}
