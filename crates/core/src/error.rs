//! Validation errors that name the offending field.

use serde::Serialize;

/// A value failed a domain rule. `field` names the input field (JSON path or CSV column)
/// so an API can answer 422 with the field named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field that is wrong, e.g. `email` or `fields.birthday`.
    pub field: String,
    /// A plain-language explanation.
    pub message: String,
}

impl ValidationError {
    /// Builds an error for `field` with a message.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Re-labels the error under a parent path (`email` → `profile.email`).
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}
