//! The one error type of the storage layer.

use voronka_core::ValidationError;

/// What can go wrong in storage, in terms callers can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such object in this workspace (objects of other workspaces are "not found" too).
    #[error("{entity} not found")]
    NotFound {
        /// What was looked for: `contact`, `tag`, `channel`…
        entity: &'static str,
    },
    /// The write would break a uniqueness rule or the object is in use.
    #[error("{message}")]
    Conflict {
        /// Machine code, e.g. `identity_taken`, `tag_exists`.
        code: &'static str,
        /// Plain-language explanation.
        message: String,
        /// The input field concerned, when there is one.
        field: Option<String>,
    },
    /// Input that passed parsing broke a rule only the store can check (unknown field
    /// key, unknown channel).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(String),
}

/// Shorthand for storage results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// A not-found error for `entity`.
    pub fn not_found(entity: &'static str) -> Self {
        StoreError::NotFound { entity }
    }

    /// A conflict error.
    pub fn conflict(code: &'static str, message: impl Into<String>, field: Option<&str>) -> Self {
        StoreError::Conflict {
            code,
            message: message.into(),
            field: field.map(str::to_string),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => StoreError::not_found("row"),
            other => StoreError::Database(other.to_string()),
        }
    }
}
