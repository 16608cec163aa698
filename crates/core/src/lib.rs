//! Voronka's domain: the types and rules of the contact base, with no I/O.
//!
//! Everything that arrives from outside (API bodies, CSV rows, messenger updates) is
//! parsed into these types once, at the edge; code past the edge can rely on them being
//! valid ("parse, don't validate").

pub mod apikey;
pub mod broadcast;
pub mod channel;
pub mod contact;
pub mod crypto;
pub mod error;
pub mod event;
pub mod field;
pub mod filter;
pub mod flow;
pub mod ids;
pub mod keywords;
pub mod message;
pub mod password;
pub mod role;
pub mod segment;
pub mod subscription;
pub mod tag;

pub use error::ValidationError;
pub use ids::*;
