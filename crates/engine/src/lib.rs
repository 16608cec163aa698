//! Voronka's jobs over the store: streamed CSV import and export of contacts, and the
//! messaging runtime (inbound pipeline, outbox delivery, channel connections). Flows,
//! timers and broadcasts will live here too.

pub mod csv_export;
pub mod csv_import;
pub mod messaging;

#[cfg(test)]
mod fake_store;
#[cfg(test)]
mod round_trip;
