//! The one error type: what we were doing (`action`) and why it failed (`cause`).
//!
//! The raw errno (or SQLite's code) is kept from the syscall to the report, so the text
//! a user reads is `Permission denied: cannot delete TAP device tap3` (the errno's
//! meaning, then what we could not do) and code can still ask what happened: `is_gone`
//! is the one place that decides "already gone".

use std::fmt;

use rustix::io::Errno;

#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// A kernel error number (positive).
    Errno(i32),
    /// SQLite said no: its code when it gave one, and its words.
    Db {
        code: Option<rusqlite::ErrorCode>,
        text: String,
    },
    /// The file is not what it should be (a state DB without SQLite's header): what it
    /// held is lost, unlike an error that a later try may not meet.
    Corrupt(String),
    /// Anything else, already phrased for a user.
    Msg(String),
    /// We could not encode the request: a fault of ours, never the kernel's answer.
    Encode,
}

#[derive(Debug, Clone, PartialEq)]
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

    /// A syscall's refusal, or a request of ours that could not be encoded.
    pub fn sys(action: impl Into<String>, fault: impl Into<Fault>) -> Error {
        match fault.into() {
            Fault::Kernel(e) => Error::errno(action, e.raw_os_error()),
            Fault::Encode => Error {
                action: action.into(),
                cause: Cause::Encode,
            },
        }
    }

    pub fn db(action: impl Into<String>, err: rusqlite::Error) -> Error {
        let code = match &err {
            rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
            _ => None,
        };
        Error {
            action: action.into(),
            cause: Cause::Db {
                code,
                text: db_text(&err),
            },
        }
    }

    pub fn corrupt(action: impl Into<String>, msg: impl Into<String>) -> Error {
        Error {
            action: action.into(),
            cause: Cause::Corrupt(msg.into()),
        }
    }

    /// From an I/O error: its errno when it has one.
    pub fn io(action: impl Into<String>, e: &std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(errno) => Error::errno(action, errno),
            None => Error::msg(action, e.to_string()),
        }
    }

    pub fn msg(action: impl Into<String>, msg: impl Into<String>) -> Error {
        Error {
            action: action.into(),
            cause: Cause::Msg(msg.into()),
        }
    }
}

/// Why a request to the kernel failed: its errno (or the socket's), or a request we could
/// not encode, which is ours and was never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kernel(Errno),
    Encode,
}

impl From<Errno> for Fault {
    fn from(e: Errno) -> Fault {
        Fault::Kernel(e)
    }
}

/// The one decision of "already gone": a delete or a signal that finds nothing to act on
/// (no such file, device or process) did what cleanup wanted. EPERM, EACCES, EBUSY never.
pub fn is_gone(e: impl Into<Fault>) -> bool {
    matches!(e.into(), Fault::Kernel(Errno::NOENT | Errno::NODEV | Errno::SRCH))
}

/// The errno's meaning, from our own table so the text is the same on musl and glibc.
/// EPERM and EACCES both read "Permission denied": what an operator needs to know is to
/// run as root / with CAP_NET_ADMIN.
pub fn errno_text(errno: i32) -> String {
    let text = match errno {
        libc::EPERM | libc::EACCES => "Permission denied",
        libc::ENOENT => "No such file or directory",
        libc::ESRCH => "No such process",
        libc::EINTR => "Interrupted",
        libc::EAGAIN => "Resource temporarily unavailable",
        libc::ENOMEM => "Out of memory",
        libc::EBUSY => "Device or resource busy",
        libc::EEXIST => "File exists",
        libc::ENODEV => "No such device",
        libc::ENOTDIR => "Not a directory",
        libc::EISDIR => "Is a directory",
        libc::EINVAL => "Invalid argument",
        libc::EROFS => "Read-only file system",
        libc::ELOOP => "Too many levels of symbolic links",
        libc::EPROTO => "Protocol error",
        libc::EMSGSIZE => "Message too long",
        libc::EPROTONOSUPPORT => "Protocol not supported",
        libc::EOPNOTSUPP => "Operation not supported",
        libc::EAFNOSUPPORT => "Address family not supported",
        libc::ENOBUFS => "No buffer space available",
        libc::ETIMEDOUT => "Timed out",
        libc::ECONNREFUSED => "Connection refused",
        _ => return format!("errno {errno}"),
    };
    text.to_string()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Errno(e) => write!(f, "{}: cannot {}", errno_text(*e), self.action),
            Cause::Db { text, .. } => write!(f, "cannot {}: {}", self.action, text),
            Cause::Msg(m) | Cause::Corrupt(m) => write!(f, "cannot {}: {}", self.action, m),
            Cause::Encode => write!(
                f,
                "cannot {}: smolvm-cleanup could not encode the request (nothing was sent)",
                self.action
            ),
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

impl std::error::Error for Error {}

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
