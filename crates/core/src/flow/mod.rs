//! Flows: versioned graphs of steps that contacts run through, started by triggers.
//!
//! This module holds the document format ([`document`]), its validator ([`validate`]),
//! and the pure pieces the engine's interpreter is built from: durations, templates,
//! answer checking and the clock arithmetic of delays. Nothing here does I/O.

pub mod answer;
pub mod document;
pub mod duration;
pub mod format;
pub mod schedule;
pub mod template;
pub mod validate;

pub use document::*;
