//! Clock arithmetic for delays and date triggers, in the contact's time zone.
//!
//! Every function is pure: it takes the current moment and a time zone and returns a
//! moment. Local times that do not exist (the hour skipped when clocks go forward) are
//! resolved the way calendars do: 02:30 on that day means 03:30. Local times that happen
//! twice (when clocks go back) mean the first one, unless that is already past.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

/// The local time a date field fires at when the flow names none.
pub const DEFAULT_FIELD_TIME: Time = jiff::civil::time(10, 0, 0, 0);

/// Parses a local time of day, `HH:MM` (`9:30` too).
pub fn parse_hhmm(s: &str) -> Result<Time, String> {
    let t = s.trim();
    let bad = || format!("`{t}` is not a time of day (expected HH:MM, e.g. 09:30)");
    let (h, m) = t.split_once(':').ok_or_else(bad)?;
    let digits = |p: &str, max_len: usize| {
        !p.is_empty() && p.len() <= max_len && p.chars().all(|c| c.is_ascii_digit())
    };
    if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

/// Parses a weekday: `mon` … `sun` or the full English name, in any case.
pub fn parse_weekday(s: &str) -> Result<Weekday, String> {
    let t = s.trim().to_lowercase();
    Ok(match t.as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => {
            return Err(format!(
                "`{}` is not a weekday (expected mon, tue, wed, thu, fri, sat or sun)",
                s.trim()
            ))
        }
    })
}

/// When messages that are not answers must not arrive: every night from `from` to `to`
/// (which may wrap midnight, like 21:00–09:00) and, when `weekends` is set, all Saturday
/// and Sunday. `from == to` means no nightly quiet time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Start of the nightly quiet time, inclusive.
    pub from: Time,
    /// End of the nightly quiet time, exclusive.
    pub to: Time,
    /// Also quiet all Saturday and Sunday.
    pub weekends: bool,
}

impl QuietHours {
    /// Whether `at` falls in quiet hours in `tz`.
    pub fn contains(&self, at: Timestamp, tz: &TimeZone) -> bool {
        let local = tz.to_datetime(at);
        (self.weekends && is_weekend(local.date().weekday()))
            || time_in(local.time(), self.from, self.to)
    }

    /// The earliest moment at or after `at` outside quiet hours.
    pub fn next_allowed(&self, at: Timestamp, tz: &TimeZone) -> Timestamp {
        let mut at = at;
        // Each pass leaves one quiet stretch (a weekend, a night); a weekend followed by
        // a quiet Monday morning needs two, a DST day at most one more.
        for _ in 0..8 {
            if !self.contains(at, tz) {
                return at;
            }
            let local = tz.to_datetime(at);
            let date = local.date();
            let next = if self.weekends && is_weekend(date.weekday()) {
                let monday = date.nth_weekday(1, Weekday::Monday).ok();
                monday.and_then(|d| local_after(d, Time::midnight(), tz, at))
            } else if local.time() < self.to {
                local_after(date, self.to, tz, at)
            } else {
                date.tomorrow()
                    .ok()
                    .and_then(|d| local_after(d, self.to, tz, at))
            };
            match next {
                Some(n) => at = n,
                None => return at,
            }
        }
        at
    }
}

/// `now` plus a duration, clamped to the range of representable moments.
pub fn after(now: Timestamp, d: SignedDuration) -> Timestamp {
    now.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// The moment a `delay.until` names: an RFC 3339 timestamp, a local `YYYY-MM-DD HH:MM`
/// (or `YYYY-MM-DDTHH:MM`) in `tz`, or a bare `HH:MM`, meaning its next occurrence
/// after `now`.
pub fn until_local(text: &str, now: Timestamp, tz: &TimeZone) -> Result<Timestamp, String> {
    let t = text.trim();
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts);
    }
    if let Ok(time) = parse_hhmm(t) {
        let today = tz.to_datetime(now).date();
        let found = [
            Some(today),
            today.tomorrow().ok(),
            today.checked_add(jiff::Span::new().days(2)).ok(),
        ]
        .into_iter()
        .flatten()
        .find_map(|d| local_after(d, time, tz, now));
        return found.ok_or_else(|| format!("`{t}` is out of range"));
    }
    let bad = || {
        format!(
            "`{t}` is not a moment (expected YYYY-MM-DD HH:MM in the contact's time zone, or RFC 3339 like 2026-05-01T10:00:00+03:00)"
        )
    };
    // jiff reads a bare date as midnight; a delay that names no time is more likely a
    // mistake than a wish to wake people at midnight.
    let has_time = t.len() > 10 && matches!(t.as_bytes().get(10), Some(b' ' | b'T' | b't'));
    if !has_time {
        return Err(bad());
    }
    let dt: DateTime = t.parse().map_err(|_| bad())?;
    tz.to_ambiguous_timestamp(dt)
        .compatible()
        .map_err(|_| format!("`{t}` is out of range"))
}

/// The moment a date or datetime field names, shifted by `offset`. A date (`YYYY-MM-DD`)
/// means local time `at` (10:00 when `None`) in `tz`; a datetime is RFC 3339.
pub fn from_field(
    value: &Value,
    at: Option<Time>,
    offset: SignedDuration,
    tz: &TimeZone,
) -> Result<Timestamp, String> {
    let text = match value {
        Value::String(s) => s.trim(),
        Value::Null => return Err("the field is empty".into()),
        other => return Err(format!("the field holds {other}, not a date")),
    };
    let base = if text.len() == 10 {
        let date: Date = text
            .parse()
            .map_err(|_| format!("`{text}` is not a date (expected YYYY-MM-DD)"))?;
        tz.to_ambiguous_timestamp(date.to_datetime(at.unwrap_or(DEFAULT_FIELD_TIME)))
            .compatible()
            .map_err(|_| format!("`{text}` is out of range"))?
    } else {
        text.parse::<Timestamp>().map_err(|_| {
            format!("`{text}` is not a date or date-time (expected YYYY-MM-DD or RFC 3339)")
        })?
    };
    base.checked_add(offset)
        .map_err(|_| format!("`{text}` shifted by {offset} is out of range"))
}

/// The first moment at or after `now` inside a weekly window: `now` itself when it is
/// inside, else the next start. `weekdays` are the days a window starts on (every day
/// when empty); a window that wraps midnight (22:00–02:00) runs into the next day.
pub fn next_in_window(
    now: Timestamp,
    weekdays: &[Weekday],
    from: Time,
    to: Time,
    tz: &TimeZone,
) -> Timestamp {
    let allowed = |d: Date| weekdays.is_empty() || weekdays.contains(&d.weekday());
    let local = tz.to_datetime(now);
    let today = local.date();
    let t = local.time();
    let inside = if from < to {
        allowed(today) && from <= t && t < to
    } else if from > to {
        (allowed(today) && t >= from) || (t < to && today.yesterday().is_ok_and(allowed))
    } else {
        false
    };
    if inside {
        return now;
    }
    let mut day = Some(today);
    for _ in 0..8 {
        let Some(d) = day else { break };
        if allowed(d) {
            if let Some(start) = local_at_or_after(d, from, tz, now) {
                return start;
            }
        }
        day = d.tomorrow().ok();
    }
    // Only at the far end of the calendar: nothing is left to wait for.
    now
}

/// The contact's local weekday at `now`.
pub fn local_weekday(now: Timestamp, tz: &TimeZone) -> Weekday {
    tz.to_datetime(now).date().weekday()
}

/// The contact's local date at `now` (for "today" in answers).
pub fn local_date(now: Timestamp, tz: &TimeZone) -> Date {
    tz.to_datetime(now).date()
}

/// Whether the contact's local time at `now` is within `from` (inclusive) – `to`
/// (exclusive); the range may wrap midnight. `from == to` is an empty range.
pub fn local_time_in(now: Timestamp, from: Time, to: Time, tz: &TimeZone) -> bool {
    time_in(tz.to_datetime(now).time(), from, to)
}

/// The next moment after `now` of a yearly date (a birthday) shifted by `offset_days`,
/// at local time `at`. Feb 29 falls on Feb 28 in other years.
pub fn next_anniversary(
    date: Date,
    at: Time,
    offset_days: i32,
    now: Timestamp,
    tz: &TimeZone,
) -> Timestamp {
    let this_year = i32::from(tz.to_datetime(now).date().year());
    // The shift may carry an anniversary into a neighbouring year; starting a little
    // early and walking forward finds the first one after `now` whatever its size.
    let first = this_year - offset_days.div_euclid(365) - 2;
    for year in first..first + 8 {
        let Ok(year) = i16::try_from(year) else {
            continue;
        };
        let Some(moment) = yearly(date, year)
            .and_then(|d| d.checked_add(jiff::Span::new().days(offset_days)).ok())
            .and_then(|d| {
                tz.to_ambiguous_timestamp(d.to_datetime(at))
                    .compatible()
                    .ok()
            })
        else {
            continue;
        };
        if moment > now {
            return moment;
        }
    }
    // Only past the end of the calendar: it never comes.
    Timestamp::MAX
}

/// The IANA time zone `name`, or `fallback` when there is none or it is unknown.
pub fn time_zone(name: Option<&str>, fallback: &TimeZone) -> TimeZone {
    name.map(str::trim)
        .filter(|n| !n.is_empty())
        .and_then(|n| TimeZone::get(n).ok())
        .unwrap_or_else(|| fallback.clone())
}

fn is_weekend(d: Weekday) -> bool {
    matches!(d, Weekday::Saturday | Weekday::Sunday)
}

fn time_in(t: Time, from: Time, to: Time) -> bool {
    if from <= to {
        from <= t && t < to
    } else {
        t >= from || t < to
    }
}

/// The month and day of `date` in `year`, Feb 29 becoming Feb 28 in common years.
fn yearly(date: Date, year: i16) -> Option<Date> {
    Date::new(year, date.month(), date.day())
        .or_else(|_| Date::new(year, date.month(), date.day() - 1))
        .ok()
}

/// Local `time` on `date` as a moment strictly after `after`: the first of a repeated
/// local time unless that one has passed.
fn local_after(date: Date, time: Time, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
    let amb = tz.to_ambiguous_timestamp(date.to_datetime(time));
    [amb.compatible().ok(), amb.later().ok()]
        .into_iter()
        .flatten()
        .find(|ts| *ts > after)
}

/// Like [`local_after`], accepting `at` itself.
fn local_at_or_after(date: Date, time: Time, tz: &TimeZone, at: Timestamp) -> Option<Timestamp> {
    let amb = tz.to_ambiguous_timestamp(date.to_datetime(time));
    [amb.compatible().ok(), amb.later().ok()]
        .into_iter()
        .flatten()
        .find(|ts| *ts >= at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{date, time};
    use serde_json::json;

    fn tz(name: &str) -> TimeZone {
        match TimeZone::get(name) {
            Ok(tz) => tz,
            Err(e) => panic!("{name}: {e}"),
        }
    }

    /// A local wall-clock moment in `zone`.
    fn at(zone: &TimeZone, s: &str) -> Timestamp {
        let dt: DateTime = s.parse().expect("datetime");
        zone.to_ambiguous_timestamp(dt)
            .compatible()
            .expect("in range")
    }

    fn local(zone: &TimeZone, ts: Timestamp) -> String {
        zone.to_datetime(ts)
            .strftime("%Y-%m-%d %a %H:%M")
            .to_string()
    }

    fn hm(s: &str) -> Time {
        parse_hhmm(s).expect("time")
    }

    #[test]
    fn parses_times_and_weekdays() {
        assert_eq!(parse_hhmm("09:30"), Ok(time(9, 30, 0, 0)));
        assert_eq!(parse_hhmm(" 9:05 "), Ok(time(9, 5, 0, 0)));
        assert_eq!(parse_hhmm("23:59"), Ok(time(23, 59, 0, 0)));
        for bad in [
            "24:00", "12:60", "1230", "12:5", "ab:cd", "", "-1:00", "12:00:00",
        ] {
            assert!(parse_hhmm(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_weekday("Mon"), Ok(Weekday::Monday));
        assert_eq!(parse_weekday("SUNDAY"), Ok(Weekday::Sunday));
        assert_eq!(parse_weekday(" fri "), Ok(Weekday::Friday));
        assert!(parse_weekday("пн").is_err());
        assert!(parse_weekday("mo").is_err());
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let msk = tz("Europe/Moscow");
        let q = QuietHours {
            from: hm("21:00"),
            to: hm("09:00"),
            weekends: false,
        };
        // 2026-03-04 is a Wednesday.
        assert!(!q.contains(at(&msk, "2026-03-04T20:59"), &msk));
        assert!(q.contains(at(&msk, "2026-03-04T21:00"), &msk));
        assert!(q.contains(at(&msk, "2026-03-05T03:00"), &msk));
        assert!(!q.contains(at(&msk, "2026-03-05T09:00"), &msk));
        let late = at(&msk, "2026-03-04T23:30");
        assert_eq!(
            local(&msk, q.next_allowed(late, &msk)),
            "2026-03-05 Thu 09:00"
        );
        let early = at(&msk, "2026-03-05T02:00");
        assert_eq!(
            local(&msk, q.next_allowed(early, &msk)),
            "2026-03-05 Thu 09:00"
        );
        let day = at(&msk, "2026-03-05T12:00");
        assert_eq!(q.next_allowed(day, &msk), day);
        let none = QuietHours {
            from: hm("00:00"),
            to: hm("00:00"),
            weekends: false,
        };
        assert!(!none.contains(late, &msk));
    }

    #[test]
    fn quiet_weekends_move_to_monday_morning() {
        let msk = tz("Europe/Moscow");
        let q = QuietHours {
            from: hm("21:00"),
            to: hm("09:00"),
            weekends: true,
        };
        // Friday night → through the weekend → Monday once the night is over.
        let fri = at(&msk, "2026-03-06T22:00");
        assert_eq!(
            local(&msk, q.next_allowed(fri, &msk)),
            "2026-03-09 Mon 09:00"
        );
        let sat_noon = at(&msk, "2026-03-07T12:00");
        assert!(q.contains(sat_noon, &msk));
        assert_eq!(
            local(&msk, q.next_allowed(sat_noon, &msk)),
            "2026-03-09 Mon 09:00"
        );
        let days_only = QuietHours {
            from: hm("00:00"),
            to: hm("00:00"),
            weekends: true,
        };
        assert_eq!(
            local(&msk, days_only.next_allowed(sat_noon, &msk)),
            "2026-03-09 Mon 00:00"
        );
    }

    #[test]
    fn quiet_hours_across_a_dst_change_in_berlin() {
        let ber = tz("Europe/Berlin");
        // Clocks go forward on 2026-03-29 at 02:00 → 03:00; a quiet time ending at 02:30
        // ends when the clocks jump.
        let q = QuietHours {
            from: hm("01:00"),
            to: hm("02:30"),
            weekends: false,
        };
        let t = at(&ber, "2026-03-29T01:30");
        let end = q.next_allowed(t, &ber);
        assert_eq!(local(&ber, end), "2026-03-29 Sun 03:30");
        assert_eq!(end.as_second() - t.as_second(), 3_600);
        // Clocks go back on 2026-10-25 at 03:00 → 02:00: the second 02:10 (after the
        // change) is quiet and ends at the second 02:30, never before it.
        let second = at(&ber, "2026-10-25T01:00")
            .checked_add(SignedDuration::from_mins(130))
            .expect("in range");
        assert_eq!(local(&ber, second), "2026-10-25 Sun 02:10");
        let q = QuietHours {
            from: hm("00:00"),
            to: hm("02:30"),
            weekends: false,
        };
        let end = q.next_allowed(second, &ber);
        assert!(end > second);
        assert_eq!(end.as_second() - second.as_second(), 20 * 60);
    }

    #[test]
    fn windows_on_weekdays() {
        let msk = tz("Europe/Moscow");
        let weekdays: Vec<Weekday> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| parse_weekday(d).expect("weekday"))
            .collect();
        let (from, to) = (hm("10:00"), hm("18:00"));
        // Friday 19:00 → Monday 10:00.
        let fri = at(&msk, "2026-03-06T19:00");
        assert_eq!(
            local(&msk, next_in_window(fri, &weekdays, from, to, &msk)),
            "2026-03-09 Mon 10:00"
        );
        let inside = at(&msk, "2026-03-06T12:00");
        assert_eq!(next_in_window(inside, &weekdays, from, to, &msk), inside);
        let early = at(&msk, "2026-03-05T08:00");
        assert_eq!(
            local(&msk, next_in_window(early, &weekdays, from, to, &msk)),
            "2026-03-05 Thu 10:00"
        );
        assert_eq!(
            local(&msk, next_in_window(fri, &[], from, to, &msk)),
            "2026-03-07 Sat 10:00"
        );
        // A night window starting Friday still holds early on Saturday.
        let night = [Weekday::Friday];
        let sat_early = at(&msk, "2026-03-07T01:00");
        assert_eq!(
            next_in_window(sat_early, &night, hm("22:00"), hm("02:00"), &msk),
            sat_early
        );
        let sat_late = at(&msk, "2026-03-07T23:00");
        assert_eq!(
            local(
                &msk,
                next_in_window(sat_late, &night, hm("22:00"), hm("02:00"), &msk)
            ),
            "2026-03-13 Fri 22:00"
        );
    }

    #[test]
    fn local_weekday_and_time() {
        let msk = tz("Europe/Moscow");
        // 21:30 UTC on a Friday is already Saturday 00:30 in Moscow.
        let t: Timestamp = "2026-03-06T21:30:00Z".parse().expect("ts");
        assert_eq!(local_weekday(t, &msk), Weekday::Saturday);
        assert_eq!(local_weekday(t, &TimeZone::UTC), Weekday::Friday);
        assert_eq!(local_date(t, &msk), date(2026, 3, 7));
        assert!(local_time_in(t, hm("23:00"), hm("01:00"), &msk));
        assert!(!local_time_in(t, hm("01:00"), hm("23:00"), &msk));
        assert!(!local_time_in(t, hm("00:30"), hm("00:30"), &msk));
    }

    #[test]
    fn after_adds_and_clamps() {
        let t: Timestamp = "2026-03-06T21:30:00Z".parse().expect("ts");
        assert_eq!(
            after(t, SignedDuration::from_hours(2)).to_string(),
            "2026-03-06T23:30:00Z"
        );
        assert_eq!(after(t, SignedDuration::MAX), Timestamp::MAX);
        assert_eq!(after(t, SignedDuration::MIN), Timestamp::MIN);
    }

    #[test]
    fn until_reads_rfc3339_and_local_times() {
        let msk = tz("Europe/Moscow");
        let now: Timestamp = "2026-03-06T12:00:00Z".parse().expect("ts");
        assert_eq!(
            until_local("2026-05-01T10:00:00+03:00", now, &msk).map(|t| t.to_string()),
            Ok("2026-05-01T07:00:00Z".into())
        );
        assert_eq!(
            until_local("2026-05-01 10:00", now, &msk).map(|t| t.to_string()),
            Ok("2026-05-01T07:00:00Z".into())
        );
        assert_eq!(
            until_local("2026-05-01T10:00", now, &msk).map(|t| t.to_string()),
            Ok("2026-05-01T07:00:00Z".into())
        );
        // 12:00 UTC is 15:00 in Moscow: 10:00 is tomorrow, 18:00 today.
        assert_eq!(
            until_local("10:00", now, &msk).map(|t| local(&msk, t)),
            Ok("2026-03-07 Sat 10:00".into())
        );
        assert_eq!(
            until_local("18:00", now, &msk).map(|t| local(&msk, t)),
            Ok("2026-03-06 Fri 18:00".into())
        );
        for bad in [
            "2026-05-01",
            "soon",
            "2026-13-01 10:00",
            "01.05.2026 10:00",
            "",
        ] {
            assert!(until_local(bad, now, &msk).is_err(), "{bad}");
        }
    }

    #[test]
    fn moments_from_fields() {
        let msk = tz("Europe/Moscow");
        let hour = SignedDuration::from_hours(1);
        assert_eq!(
            from_field(&json!("2026-05-01T10:00:00Z"), None, -hour, &msk).map(|t| t.to_string()),
            Ok("2026-05-01T09:00:00Z".into())
        );
        assert_eq!(
            from_field(&json!("2026-05-01"), None, SignedDuration::ZERO, &msk)
                .map(|t| local(&msk, t)),
            Ok("2026-05-01 Fri 10:00".into())
        );
        assert_eq!(
            from_field(&json!("2026-05-01"), Some(hm("19:30")), -hour, &msk)
                .map(|t| local(&msk, t)),
            Ok("2026-05-01 Fri 18:30".into())
        );
        for bad in [
            json!(null),
            json!(5),
            json!("tomorrow"),
            json!("2026-02-30"),
        ] {
            assert!(from_field(&bad, None, hour, &msk).is_err(), "{bad}");
        }
    }

    #[test]
    fn anniversaries_including_feb_29() {
        let msk = tz("Europe/Moscow");
        let leap = date(2000, 2, 29);
        let ten = hm("10:00");
        let now = at(&msk, "2026-01-15T12:00");
        assert_eq!(
            local(&msk, next_anniversary(leap, ten, 0, now, &msk)),
            "2026-02-28 Sat 10:00"
        );
        let now = at(&msk, "2027-03-01T12:00");
        assert_eq!(
            local(&msk, next_anniversary(leap, ten, 0, now, &msk)),
            "2028-02-29 Tue 10:00"
        );
        assert_eq!(
            local(&msk, next_anniversary(leap, ten, -1, now, &msk)),
            "2028-02-28 Mon 10:00"
        );
        // Already past today's 10:00: next year.
        let birthday = date(1990, 3, 1);
        let now = at(&msk, "2026-03-01T10:00");
        assert_eq!(
            local(&msk, next_anniversary(birthday, ten, 0, now, &msk)),
            "2027-03-01 Mon 10:00"
        );
        // Three days before a January date reaches back into December.
        let jan = date(1990, 1, 2);
        let now = at(&msk, "2026-12-01T00:00");
        assert_eq!(
            local(&msk, next_anniversary(jan, ten, -3, now, &msk)),
            "2026-12-30 Wed 10:00"
        );
        assert_eq!(
            local(&msk, next_anniversary(jan, ten, 400, now, &msk)),
            "2027-02-06 Sat 10:00"
        );
    }

    #[test]
    fn time_zones_fall_back() {
        let msk = tz("Europe/Moscow");
        assert_eq!(
            time_zone(Some("Europe/Berlin"), &msk).iana_name(),
            Some("Europe/Berlin")
        );
        assert_eq!(
            time_zone(Some("Mars/Base"), &msk).iana_name(),
            Some("Europe/Moscow")
        );
        assert_eq!(time_zone(None, &msk).iana_name(), Some("Europe/Moscow"));
        assert_eq!(
            time_zone(Some(" "), &msk).iana_name(),
            Some("Europe/Moscow")
        );
    }
}
