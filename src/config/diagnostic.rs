//! Config errors and warnings, each tied to a file position.
//!
//! Loading collects every problem it can find instead of stopping at the
//! first, and prints them as `FILE:LINE:COL: message` so editors and CI logs
//! can jump to them.

use super::yaml::Pos;
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One config problem at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning: ",
            Severity::Error => "",
        };
        write!(
            f,
            "{}:{}:{}: {level}{}",
            self.file.display(),
            self.pos.line,
            self.pos.col,
            self.message
        )
    }
}

/// Collects diagnostics for one file while it is decoded.
///
/// Interior mutability because the serde deserializer only has `&self`
/// access; decoding is single-threaded.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: RefCell<Vec<(Severity, Pos, String)>>,
}

impl Diagnostics {
    pub fn error(&self, pos: Pos, message: impl Into<String>) {
        self.items
            .borrow_mut()
            .push((Severity::Error, pos, message.into()));
    }

    pub fn warning(&self, pos: Pos, message: impl Into<String>) {
        self.items
            .borrow_mut()
            .push((Severity::Warning, pos, message.into()));
    }

    /// Number of errors recorded so far.
    pub fn error_count(&self) -> usize {
        self.items
            .borrow()
            .iter()
            .filter(|(s, _, _)| *s == Severity::Error)
            .count()
    }

    /// Moves everything recorded into `out`, attributed to `file`.
    pub fn drain_into(&self, file: &Path, out: &mut Vec<Diagnostic>) {
        out.extend(
            self.items
                .borrow_mut()
                .drain(..)
                .map(|(severity, pos, message)| Diagnostic {
                    severity,
                    file: file.to_path_buf(),
                    pos,
                    message,
                }),
        );
    }
}
