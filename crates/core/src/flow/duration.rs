//! Durations as marketers write them: `90s`, `5m`, `2h`, `1d 12h`, `1w`, with an
//! optional leading minus for offsets (`-1d`).

use jiff::SignedDuration;

/// Longest duration accepted anywhere in a flow (about ten years).
const MAX_SECONDS: i64 = 10 * 366 * 86_400;

/// Parses a duration. Units: `s`, `m`, `h`, `d` (24 hours), `w` (7 days); parts may be
/// separated by spaces and must not repeat a unit.
pub fn parse(text: &str) -> Result<SignedDuration, String> {
    let t = text.trim();
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if body.is_empty() {
        return Err(format!(
            "`{text}` is not a duration (write e.g. `30m`, `2h`, `1d 12h`)"
        ));
    }
    let mut total: i64 = 0;
    let mut seen = String::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut digits = String::new();
        while let Some(c) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(c);
            chars.next();
        }
        let unit = chars.next();
        let per = match unit {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3_600,
            Some('d') => 86_400,
            Some('w') => 7 * 86_400,
            _ => {
                return Err(format!(
                    "`{text}` is not a duration (write e.g. `30m`, `2h`, `1d 12h`; units s, m, h, d, w)"
                ))
            }
        };
        let unit = unit.unwrap_or('s');
        if digits.is_empty() || seen.contains(unit) {
            return Err(format!(
                "`{text}` is not a duration (write e.g. `30m`, `2h`, `1d 12h`; units s, m, h, d, w)"
            ));
        }
        seen.push(unit);
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is too long a duration"))?;
        total = n
            .checked_mul(per)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= MAX_SECONDS)
            .ok_or_else(|| format!("`{text}` is too long a duration (at most about 10 years)"))?;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    }
    let secs = if negative { -total } else { total };
    Ok(SignedDuration::from_secs(secs))
}

/// Parses a duration that must be positive.
pub fn parse_positive(text: &str) -> Result<SignedDuration, String> {
    let d = parse(text)?;
    if d.is_positive() {
        Ok(d)
    } else {
        Err(format!("`{text}` must be a positive duration"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_marketers_write() {
        let secs = |t: &str| parse(t).map(|d| d.as_secs());
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("5m"), Ok(300));
        assert_eq!(secs("2h"), Ok(7200));
        assert_eq!(secs("1d 12h"), Ok(129_600));
        assert_eq!(secs("1d12h"), Ok(129_600));
        assert_eq!(secs("1w"), Ok(604_800));
        assert_eq!(secs("-1d"), Ok(-86_400));
        assert_eq!(secs(" - 5m "), Ok(-300));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "2",
            "h",
            "2x",
            "1h 1h",
            "2 hours",
            "99999999999w",
            "--1d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_positive("0s").is_err());
        assert!(parse_positive("-1h").is_err());
        assert!(parse_positive("1s").is_ok());
    }
}
