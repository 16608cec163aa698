//! Voronka's jobs over the store: streamed CSV import and export of contacts, the
//! messaging runtime (inbound pipeline, outbox delivery, channel connections), the flow
//! runtime (triggers, durable runs, timers), the broadcast runtime (planning, paced
//! sending, A/B winners, follow-ups, recall) and guarded outgoing HTTP.

pub mod broadcasts;
pub mod csv_export;
pub mod csv_import;
pub mod flows;
pub mod messaging;
pub mod outgoing;

#[cfg(test)]
mod fake_store;
#[cfg(test)]
mod round_trip;
