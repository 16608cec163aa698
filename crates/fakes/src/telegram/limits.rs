//! Flood limits, as a generic cell rate algorithm (GCRA).
//!
//! Telegram answers a too-fast sender with 429 and `retry_after`; a sender that ignores it
//! gets banned for longer. Voronka's outbound queue must pace itself per bot and per chat,
//! and the only way to test that pacing is a server that refuses the same way. GCRA is a
//! token bucket stored as one number (the "theoretical arrival time"), which also tells
//! exactly how long until the next token, i.e. the `retry_after` to report.
//!
//! Times are seconds since the fake started, as `f64`, so the arithmetic never has to deal
//! with `Instant` underflow.

/// One bucket: `burst` tokens, refilled continuously at `rate` per second.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gcra {
    /// Theoretical arrival time of the next request if the bucket were drained evenly.
    tat: f64,
}

/// Parameters of a bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    pub per_sec: f64,
    pub burst: u32,
}

impl Rate {
    fn unlimited(self) -> bool {
        !(self.per_sec.is_finite() && self.per_sec > 0.0)
    }

    fn interval(self) -> f64 {
        1.0 / self.per_sec
    }

    fn tolerance(self) -> f64 {
        self.interval() * f64::from(self.burst.max(1) - 1)
    }
}

impl Gcra {
    /// Seconds until a token is available at `now`; zero when one is available now.
    pub(crate) fn wait(&self, now: f64, rate: Rate) -> f64 {
        if rate.unlimited() {
            return 0.0;
        }
        let allow_at = self.tat.max(now) - rate.tolerance();
        let wait = allow_at - now;
        // Summing intervals in floating point drifts by a few ulps; that is not a refusal.
        if wait < 1e-9 {
            0.0
        } else {
            wait
        }
    }

    /// Takes one token; call only after [`Gcra::wait`] returned zero.
    pub(crate) fn take(&mut self, now: f64, rate: Rate) {
        if !rate.unlimited() {
            self.tat = self.tat.max(now) + rate.interval();
        }
    }
}

/// Takes a token from both buckets, or from neither and returns the `retry_after` seconds
/// Telegram would report (rounded up, at least 1).
pub(crate) fn take_both(
    bot: &mut Gcra,
    bot_rate: Rate,
    chat: &mut Gcra,
    chat_rate: Rate,
    now: f64,
) -> Result<(), u64> {
    let wait = bot.wait(now, bot_rate).max(chat.wait(now, chat_rate));
    if wait > 0.0 {
        // Saturating float-to-int cast: an absurd wait still yields a finite answer.
        return Err((wait.ceil() as u64).max(1));
    }
    bot.take(now, bot_rate);
    chat.take(now, chat_rate);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rate = Rate {
        per_sec: 1.0,
        burst: 3,
    };

    #[test]
    fn burst_then_refill() {
        let mut g = Gcra::default();
        for _ in 0..3 {
            assert_eq!(g.wait(10.0, R), 0.0);
            g.take(10.0, R);
        }
        let w = g.wait(10.0, R);
        assert!((w - 1.0).abs() < 1e-9, "{w}");
        assert_eq!(g.wait(11.0, R), 0.0);
        g.take(11.0, R);
        assert!(g.wait(11.0, R) > 0.0);
    }

    #[test]
    fn fractional_rates_round_retry_after_up() {
        let rate = Rate {
            per_sec: 0.25,
            burst: 1,
        };
        let mut bot = Gcra::default();
        let mut chat = Gcra::default();
        let unlimited = Rate {
            per_sec: 0.0,
            burst: 1,
        };
        assert!(take_both(&mut bot, rate, &mut chat, unlimited, 5.0).is_ok());
        assert_eq!(take_both(&mut bot, rate, &mut chat, unlimited, 5.5), Err(4));
        assert_eq!(
            take_both(&mut bot, rate, &mut chat, unlimited, 8.99),
            Err(1)
        );
    }

    #[test]
    fn refused_request_takes_no_token() {
        let one = Rate {
            per_sec: 1.0,
            burst: 1,
        };
        let many = Rate {
            per_sec: 100.0,
            burst: 100,
        };
        let mut bot = Gcra::default();
        let mut chat = Gcra::default();
        assert!(take_both(&mut bot, many, &mut chat, one, 1.0).is_ok());
        for _ in 0..10 {
            assert!(take_both(&mut bot, many, &mut chat, one, 1.0).is_err());
        }
        // The bot bucket lost only the one token actually used.
        assert_eq!(bot.wait(1.0, many), 0.0);
        let mut other_chat = Gcra::default();
        for _ in 0..99 {
            assert!(take_both(&mut bot, many, &mut other_chat, many, 1.0).is_ok());
        }
        assert!(take_both(&mut bot, many, &mut other_chat, many, 1.0).is_err());
    }
}
