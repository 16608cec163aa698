//! Checking the answer to an `ask` step: whether what the contact sent (typed or pressed)
//! is what the question expects, and the value to store when it is.

use super::document::{Choice, Expect};
use crate::field::MAX_TEXT_VALUE;
use crate::keywords::normalize;
use jiff::civil::Date;
use serde_json::Value;

/// An accepted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// What is stored in the field and in `answers.<step id>`.
    pub value: Value,
    /// How the answer reads back to a person (a choice's label, a normalised number).
    pub display: String,
    /// For a choice question: the index of the chosen option.
    pub choice: Option<usize>,
}

impl Answer {
    fn plain(value: Value, display: String) -> Self {
        Self {
            value,
            display,
            choice: None,
        }
    }
}

/// Checks an answer. `text` is what was typed (or the pressed button's text), `payload`
/// the pressed button's payload, `today` the contact's local date (for "today" and
/// "tomorrow"). The error is a short reason for logs; the contact is told
/// [`default_retry_text`] or the step's own retry text.
pub fn check(
    expect: Expect,
    choices: &[Choice],
    text: &str,
    payload: Option<&str>,
    today: Date,
) -> Result<Answer, String> {
    if expect == Expect::Choice {
        return choice(choices, text, payload);
    }
    // A button pressed under a free-form question still answers it with its payload.
    let text = match (text.trim(), payload) {
        ("", Some(p)) => p.trim(),
        (t, _) => t,
    };
    if text.is_empty() {
        return Err("empty answer".into());
    }
    match expect {
        Expect::Text => {
            if text.chars().count() > MAX_TEXT_VALUE {
                return Err(format!("answer longer than {MAX_TEXT_VALUE} characters"));
            }
            Ok(Answer::plain(Value::from(text), text.to_string()))
        }
        Expect::Email => crate::contact::email(text.to_string())
            .map(|e| Answer::plain(Value::from(e.as_str()), e))
            .map_err(|_| "not an e-mail address".to_string()),
        Expect::Phone => crate::contact::phone(text.to_string())
            .map(|p| Answer::plain(Value::from(p.as_str()), p))
            .map_err(|_| "not a phone number".to_string()),
        Expect::Number => number(text),
        Expect::Date => date(text, today).map(|d| {
            let s = d.to_string();
            Answer::plain(Value::from(s.as_str()), s)
        }),
        Expect::Choice => choice(choices, text, payload),
    }
}

/// What the contact is told after an invalid answer when the step has no retry text.
pub fn default_retry_text(expect: Expect) -> &'static str {
    match expect {
        Expect::Text => "Please send your answer as a text message.",
        Expect::Email => "Please send a valid e-mail address, like name@example.com.",
        Expect::Phone => {
            "Please send a valid phone number with the country code, like +44 20 7946 0958."
        }
        Expect::Number => "Please send a number, like 42 or 12.5.",
        Expect::Date => "Please send a date, like 31.12.2026 or 2026-12-31.",
        Expect::Choice => "Please choose one of the options: press a button or send its number.",
    }
}

/// Accepts `12`, `-3`, `12.5`, `12,5` and `1 000` (thousands separated by spaces).
fn number(text: &str) -> Result<Answer, String> {
    let bad = || format!("`{}` is not a number", shorten(text));
    // Phones and keyboards put ordinary, no-break and thin spaces between thousands.
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let compact = compact.replace(',', ".");
    let digits = compact.strip_prefix(['-', '+']).unwrap_or(&compact);
    let well_formed = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.matches('.').count() <= 1
        && !digits.starts_with('.')
        && !digits.ends_with('.');
    if !well_formed || digits.len() > 30 {
        return Err(bad());
    }
    let n: f64 = compact.parse().map_err(|_| bad())?;
    let value = if n.fract() == 0.0 && n.abs() < 9.0e15 {
        // Whole numbers are stored as integers, as a person would read them back.
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(bad)?
    };
    let display = value.to_string();
    Ok(Answer::plain(value, display))
}

/// Accepts `2026-03-01`, day-first `01.03.2026`, `1.3.2026`, `01/03/2026`, `01-03-2026`,
/// and the words today / tomorrow / yesterday in English and Russian.
fn date(text: &str, today: Date) -> Result<Date, String> {
    let bad = || format!("`{}` is not a date", shorten(text));
    let relative = match normalize(text).as_str() {
        "today" | "сегодня" => Some(0),
        "tomorrow" | "завтра" => Some(1),
        "yesterday" | "вчера" => Some(-1),
        "day after tomorrow" | "послезавтра" => Some(2),
        _ => None,
    };
    if let Some(days) = relative {
        return today
            .checked_add(jiff::Span::new().days(days))
            .map_err(|_| bad());
    }
    let parts: Vec<&str> = text.split(['.', '/', '-']).map(str::trim).collect();
    let [a, b, c] = parts.as_slice() else {
        return Err(bad());
    };
    let all_digits = parts
        .iter()
        .all(|p| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_digit()));
    if !all_digits {
        return Err(bad());
    }
    let (year, month, day) = if a.len() == 4 {
        (*a, *b, *c)
    } else if c.len() == 4 && a.len() <= 2 && b.len() <= 2 {
        (*c, *b, *a)
    } else {
        return Err(bad());
    };
    let year: i16 = year.parse().map_err(|_| bad())?;
    let month: i8 = month.parse().map_err(|_| bad())?;
    let day: i8 = day.parse().map_err(|_| bad())?;
    if year < 1000 {
        return Err(bad());
    }
    Date::new(year, month, day).map_err(|_| bad())
}

/// Finds the chosen option: a pressed payload equal to a value or label, a typed label
/// (case, spaces and punctuation ignored) or the option's number, counted from 1.
fn choice(choices: &[Choice], text: &str, payload: Option<&str>) -> Result<Answer, String> {
    if choices.is_empty() {
        return Err("the question has no choices".into());
    }
    let chosen = |i: usize, c: &Choice| Answer {
        value: Value::from(c.stored()),
        display: c.label.clone(),
        choice: Some(i),
    };
    if let Some(p) = payload {
        let found = choices
            .iter()
            .position(|c| c.stored() == p)
            .or_else(|| choices.iter().position(|c| c.label == p));
        if let Some(i) = found {
            return Ok(chosen(i, &choices[i]));
        }
    }
    let typed = text.trim();
    if typed.is_empty() {
        return Err("empty answer".into());
    }
    // Exact text first: a label made only of emoji normalises to nothing.
    if let Some(i) = choices
        .iter()
        .position(|c| c.label.trim() == typed || c.stored().trim() == typed)
    {
        return Ok(chosen(i, &choices[i]));
    }
    let norm = normalize(typed);
    if !norm.is_empty() {
        if let Some(i) = choices
            .iter()
            .position(|c| normalize(&c.label) == norm || normalize(c.stored()) == norm)
        {
            return Ok(chosen(i, &choices[i]));
        }
    }
    // Numbers come last, so options labelled "1", "2", "3" (a rating) match as labels.
    if let Ok(n) = norm.parse::<usize>() {
        if (1..=choices.len()).contains(&n) {
            return Ok(chosen(n - 1, &choices[n - 1]));
        }
    }
    Err(format!("`{}` is not one of the choices", shorten(typed)))
}

/// The first characters of a long answer, for a log line.
fn shorten(text: &str) -> String {
    const KEEP: usize = 40;
    if text.chars().count() <= KEEP {
        text.to_string()
    } else {
        let head: String = text.chars().take(KEEP).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TODAY: Date = jiff::civil::date(2026, 2, 27);

    fn ok(expect: Expect, text: &str) -> Value {
        match check(expect, &[], text, None, TODAY) {
            Ok(a) => a.value,
            Err(e) => panic!("{text:?} refused: {e}"),
        }
    }

    fn refused(expect: Expect, text: &str) -> bool {
        check(expect, &[], text, None, TODAY).is_err()
    }

    fn choices() -> Vec<Choice> {
        vec![
            Choice {
                label: "Да, хочу!".into(),
                value: Some("yes".into()),
                next: None,
            },
            Choice {
                label: "Нет".into(),
                value: None,
                next: None,
            },
            Choice {
                label: "👍".into(),
                value: Some("like".into()),
                next: None,
            },
        ]
    }

    #[test]
    fn text_accepts_anything_but_empty_or_huge() {
        assert_eq!(ok(Expect::Text, "  Привет  "), json!("Привет"));
        assert!(refused(Expect::Text, "   "));
        assert!(refused(Expect::Text, &"x".repeat(MAX_TEXT_VALUE + 1)));
        let pressed = check(Expect::Text, &[], "", Some("from button"), TODAY).expect("payload");
        assert_eq!(pressed.value, json!("from button"));
    }

    #[test]
    fn email_is_normalised_by_the_contact_rules() {
        assert_eq!(
            ok(Expect::Email, " ivan@Example.RU "),
            json!("ivan@example.ru")
        );
        for bad in ["ivan", "ivan@", "a b@x.ru", "@x.ru"] {
            assert!(refused(Expect::Email, bad), "{bad}");
        }
    }

    #[test]
    fn phone_is_normalised_by_the_contact_rules() {
        assert_eq!(
            ok(Expect::Phone, "+7 (912) 345-67-89"),
            json!("+79123456789")
        );
        assert_eq!(ok(Expect::Phone, "79123456789"), json!("+79123456789"));
        for bad in ["123", "call me", "+7 912 abc"] {
            assert!(refused(Expect::Phone, bad), "{bad}");
        }
    }

    #[test]
    fn numbers_in_the_forms_people_type() {
        assert_eq!(ok(Expect::Number, "12"), json!(12));
        assert_eq!(ok(Expect::Number, "12.5"), json!(12.5));
        assert_eq!(ok(Expect::Number, "12,5"), json!(12.5));
        assert_eq!(ok(Expect::Number, " 1 000 "), json!(1000));
        assert_eq!(ok(Expect::Number, "1\u{a0}000,25"), json!(1000.25));
        assert_eq!(ok(Expect::Number, "-3"), json!(-3));
        let a = check(Expect::Number, &[], "12,50", None, TODAY).expect("number");
        assert_eq!(a.display, "12.5");
        for bad in [
            "abc", "12a", "1.2.3", "1e5", "NaN", "inf", ".5", "5.", "-", "12 кг",
        ] {
            assert!(refused(Expect::Number, bad), "{bad}");
        }
    }

    #[test]
    fn dates_day_first_iso_and_relative() {
        for t in [
            "2026-03-01",
            "01.03.2026",
            "1.3.2026",
            "01/03/2026",
            "01-03-2026",
        ] {
            assert_eq!(ok(Expect::Date, t), json!("2026-03-01"), "{t}");
        }
        assert_eq!(ok(Expect::Date, "Сегодня"), json!("2026-02-27"));
        assert_eq!(ok(Expect::Date, "today"), json!("2026-02-27"));
        assert_eq!(ok(Expect::Date, "завтра"), json!("2026-02-28"));
        assert_eq!(ok(Expect::Date, "Tomorrow!"), json!("2026-02-28"));
        for bad in [
            "31.02.2026",
            "2026-13-01",
            "1.3",
            "01.03.26",
            "soon",
            "1.3.2026.1",
            "0001-01-01",
        ] {
            assert!(refused(Expect::Date, bad), "{bad}");
        }
    }

    #[test]
    fn choices_by_payload_label_or_number() {
        let c = choices();
        let pick = |text: &str, payload: Option<&str>| {
            check(Expect::Choice, &c, text, payload, TODAY).map(|a| (a.choice, a.value))
        };
        assert_eq!(pick("", Some("yes")), Ok((Some(0), json!("yes"))));
        assert_eq!(pick("", Some("Нет")), Ok((Some(1), json!("Нет"))));
        assert_eq!(pick("да хочу", None), Ok((Some(0), json!("yes"))));
        assert_eq!(pick("  НЕТ. ", None), Ok((Some(1), json!("Нет"))));
        assert_eq!(pick("2", None), Ok((Some(1), json!("Нет"))));
        assert_eq!(pick("👍", None), Ok((Some(2), json!("like"))));
        assert_eq!(pick("like", None), Ok((Some(2), json!("like"))));
        let a = check(Expect::Choice, &c, "1", None, TODAY).expect("first");
        assert_eq!(a.display, "Да, хочу!");
        for bad in ["4", "0", "maybe", ""] {
            assert!(pick(bad, None).is_err(), "{bad}");
        }
        assert!(pick("", Some("unknown")).is_err());
        assert!(check(Expect::Choice, &[], "1", None, TODAY).is_err());
    }

    #[test]
    fn numbered_labels_win_over_positions() {
        let c: Vec<Choice> = ["3", "2", "1"]
            .iter()
            .map(|l| Choice {
                label: l.to_string(),
                ..Choice::default()
            })
            .collect();
        let a = check(Expect::Choice, &c, "1", None, TODAY).expect("label");
        assert_eq!(a.choice, Some(2));
    }

    #[test]
    fn every_kind_has_a_retry_text() {
        for e in [
            Expect::Text,
            Expect::Email,
            Expect::Phone,
            Expect::Number,
            Expect::Date,
            Expect::Choice,
        ] {
            assert!(default_retry_text(e).ends_with('.'));
        }
    }
}
