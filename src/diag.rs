//! stderr diagnostics: warnings (yellow on a terminal unless NO_COLOR), kept too for the
//! JSON document, and with `--verbose` notes on what the run sees and does.

use std::io::IsTerminal;

/// stderr diagnostics: warnings (yellow on a terminal unless NO_COLOR) and, with
/// `--verbose`, notes. Warnings are also kept for the JSON document.
pub struct Diag {
    pub verbose: bool,
    color: bool,
    pub warnings: Vec<String>,
}

impl Diag {
    pub fn new(verbose: bool) -> Diag {
        let color = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |t| t != "dumb");
        Diag {
            verbose,
            color,
            warnings: Vec::new(),
        }
    }

    pub fn warn(&mut self, msg: String) {
        if self.color {
            eprintln!("smolvm-cleanup: \x1b[33mwarning\x1b[0m: {msg}");
        } else {
            eprintln!("smolvm-cleanup: warning: {msg}");
        }
        self.warnings.push(msg);
    }

    pub fn note(&self, msg: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("smolvm-cleanup: {}", msg());
        }
    }
}
