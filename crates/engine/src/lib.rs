//! Voronka's jobs over the store. Today: streamed CSV import and export of contacts.
//! Flows, timers, broadcasts and outbound delivery will live here too.

pub mod csv_export;
pub mod csv_import;

#[cfg(test)]
mod fake_store;
#[cfg(test)]
mod round_trip;
