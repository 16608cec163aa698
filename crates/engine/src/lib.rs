//! Voronka's jobs over the store: streamed CSV import and export of contacts, the
//! messaging runtime (inbound pipeline, outbox delivery, channel connections), the flow
//! runtime (triggers, durable runs, timers) and guarded outgoing HTTP.

pub mod csv_export;
pub mod csv_import;
pub mod flows;
pub mod messaging;
pub mod outgoing;

#[cfg(test)]
mod fake_store;
#[cfg(test)]
mod round_trip;
