//! Fake messenger provider servers for Voronka's tests, demo and benchmarks.
//!
//! Voronka talks to messengers over their public HTTP APIs. Testing that code against the
//! real services is slow, needs accounts and can't reproduce rate limits, blocked users or
//! webhook retries on demand. The fakes here speak the same wire protocol as the real
//! services closely enough that the production client code runs against them unchanged:
//! same URLs, same JSON envelopes, same error descriptions and HTTP statuses, same update
//! shapes. Where the real service is stricter than its documentation admits (or looser),
//! the fake follows the documented contract, because that is what our code must honour.
//!
//! A fake never talks to anything but the loopback interface: it binds only to loopback
//! addresses and refuses webhook URLs that point elsewhere, so a misconfigured test can't
//! send traffic to the internet.
//!
//! Today there is one fake, [`telegram`], for the Telegram Bot API.

pub mod telegram;

pub use telegram::{FakeConfig, FakeTelegram};
