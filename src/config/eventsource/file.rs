//! `file:` events (a spillway extension): one event per line of a file or
//! of standard input, read only as fast as the bus accepts.

use crate::config::decode::Spanned;
use crate::config::flow_control::Problem;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One file (or `-` for standard input).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEvent {
    /// File to read, or `-` for standard input.
    pub path: Spanned<String>,
    /// Keep reading lines appended after the end (like `tail -f`). Default false.
    pub follow: Option<bool>,
    /// Each line is JSON and is embedded as such.
    pub json_body: Option<bool>,
    pub metadata: Option<BTreeMap<String, String>>,
}

impl FileEvent {
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.path.value.is_empty() {
            out.push((
                self.path.pos,
                "path must name a file, or be `-` for standard input".to_string(),
            ));
        }
        out
    }
}
